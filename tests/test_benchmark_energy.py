"""RAPL reading, against a powercap tree laid out like the kernel's (this VM exposes none)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import energy


def _zone(root: Path, name: str, energy_uj: int, max_uj: int = 262143328850) -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return zone


def test_joules_sum_packages_and_survive_a_counter_wrap(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(energy, "POWERCAP", tmp_path)
    package0 = _zone(tmp_path, "intel-rapl:0", 5_000_000)
    package1 = _zone(tmp_path, "intel-rapl:1", 1_000, max_uj=10_000_000)
    _zone(tmp_path, "intel-rapl:0:0", 7)  # a sub-zone (core), already counted in its package
    meter = energy.EnergyMeter()
    (package0 / "energy_uj").write_text("7500000\n")
    (package1 / "energy_uj").write_text("500\n")  # wrapped past 10 J
    assert meter.joules() == pytest.approx(2.5 + (10.0 - 0.001 + 0.0005))
    assert energy.rapl_status() == "readable: intel-rapl:0, intel-rapl:1"


def test_no_powercap_means_no_joules(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(energy, "POWERCAP", tmp_path / "absent")
    assert energy.EnergyMeter().joules() is None
    assert energy.rapl_status().startswith("not available")


def test_unreadable_zones_are_reported_as_such(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(energy, "POWERCAP", tmp_path)
    (tmp_path / "intel-rapl:0").mkdir()
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("not a number")
    assert energy.EnergyMeter().joules() is None
    assert energy.rapl_status().startswith("not readable")
