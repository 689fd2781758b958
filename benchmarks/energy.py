"""Package energy from RAPL (/sys/class/powercap), where the kernel exposes it and we may read it.

CPU-seconds are the energy proxy everywhere; joules are reported only when measured, never
estimated, so a `null` in the results means "not readable on this machine"."""

from __future__ import annotations

from pathlib import Path

POWERCAP = Path("/sys/class/powercap")


def rapl_zones() -> list[Path]:
    """Top-level package zones (intel-rapl:0, intel-rapl:1, ...); AMD kernels use the same names."""
    if not POWERCAP.is_dir():
        return []
    return sorted(p for p in POWERCAP.glob("intel-rapl:*") if p.name.count(":") == 1 and _readable(p))


def _readable(zone: Path) -> bool:
    try:
        int((zone / "energy_uj").read_text())
    except (OSError, ValueError):
        return False
    return True


def rapl_status() -> str:
    if not POWERCAP.is_dir():
        return "not available: /sys/class/powercap does not exist (no RAPL driver, or a VM that hides it)"
    if not rapl_zones():
        return "not readable: no package zone under /sys/class/powercap could be read (permissions?)"
    return "readable: " + ", ".join(z.name for z in rapl_zones())


class EnergyMeter:
    """Joules used by all CPU packages since construction, or None where RAPL is not readable."""

    def __init__(self) -> None:
        self._zones = rapl_zones()
        self._start = [self._read(z) for z in self._zones]

    @staticmethod
    def _read(zone: Path) -> int:
        return int((zone / "energy_uj").read_text())

    def joules(self) -> float | None:
        if not self._zones:
            return None
        total = 0
        for zone, start in zip(self._zones, self._start, strict=True):
            now = self._read(zone)
            if now < start:
                now += int((zone / "max_energy_range_uj").read_text())
            total += now - start
        return total / 1e6
