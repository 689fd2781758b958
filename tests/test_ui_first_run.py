"""First run and its errors: what is saved, where large downloads go, and what offline says."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog

from app.settings import load_settings
from tests.conftest import ROOT
from tests.test_ui import open_window, wait_ready  # noqa: F401 (fixture)


def test_a_wrong_bundle_is_not_saved_and_the_previous_one_stays(qtbot, open_window, fp32_bundle, tmp_path) -> None:  # noqa: F811
    data = tmp_path / "data"
    window, controller = open_window(data)
    wrong = tmp_path / "Downloads"
    wrong.mkdir()
    window.welcome.bundle_chosen.emit(str(wrong))
    qtbot.waitUntil(lambda: controller.model_state == "error", timeout=30000)
    assert load_settings(data)[0].bundle_path == ""
    banner = window.welcome.banner
    assert "not saved as your model" in banner.text() and not banner.icon.pixmap().isNull()
    window.welcome.bundle_chosen.emit(str(fp32_bundle))
    wait_ready(qtbot, controller)
    assert load_settings(data)[0].bundle_path == str(fp32_bundle)
    # Later, a wrong choice in Settings keeps the working model, loaded, and says why.
    controller.use_bundle(str(wrong))
    qtbot.waitUntil(lambda: "could not be used" in window.chat.banner.text(), timeout=30000)
    wait_ready(qtbot, controller)
    assert load_settings(data)[0].bundle_path == str(fp32_bundle) == controller.settings.bundle_path
    assert "Keeping tiny-fp32" in window.chat.banner.text()


def test_download_asks_where_and_offline_says_so(qtbot, open_window, tmp_path, monkeypatch) -> None:  # noqa: F811
    asked: list[str] = []
    chosen = tmp_path / "Big disk"
    chosen.mkdir()

    def choose(_parent, title: str, _start: str) -> str:
        asked.append(title)
        return str(chosen)

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", choose)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what an unplugged machine gets, without waiting for timeouts
    window, _ = open_window()
    welcome = window.welcome
    welcome.repo.setText("NexaAIDev/Squid")
    welcome._start_download()
    assert asked == ["Where should NexaAIDev/Squid be downloaded to? (about 16 GB)"]
    assert welcome._job_out == chosen / "NexaAIDev--Squid"
    qtbot.waitUntil(lambda: "you appear to be offline" in welcome.banner.text(), timeout=60000)
    assert welcome.download.isEnabled()


def test_convert_asks_where_the_bundle_goes(qtbot, open_window, tmp_path, monkeypatch) -> None:  # noqa: F811
    answers = iter(["", str(tmp_path / "Models")])
    titles: list[str] = []

    def choose(_parent, title: str, _start: str) -> str:
        titles.append(title)
        return next(answers)

    (tmp_path / "Models").mkdir()
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", choose)
    window, _ = open_window()
    welcome = window.welcome
    source = str(ROOT / "tests" / "fixtures" / "tiny-dolphin")
    welcome.start_conversion(source)
    assert "Conversion not started" in welcome.status.text() and welcome._process is None
    welcome.start_conversion(source)
    assert titles[-1] == "Where should the model bundle go? (about 6 GB)"
    assert welcome._job_out == Path(tmp_path / "Models" / "tiny-dolphin-int4")
    assert welcome._process is not None
    welcome._cancel()
    qtbot.waitUntil(lambda: welcome._process is None, timeout=30000)
