"""First run: what a model bundle is, and three ways to get one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from PySide6.QtCore import QProcess, Qt, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.ui.chat import Banner

CONVERTER_HELP = (
    "Converting needs the converter's packages (torch, transformers, onnx, onnxruntime-genai), which "
    "the packaged app does not include. In a terminal, from the source folder, run:\n"
    "    .venv/bin/pip install torch==2.13.0 -e '.[convert]'\n"
    "then choose “Convert” again, or run  dolphin-desk convert CHECKPOINT BUNDLE  and choose the bundle here."
)


def cli_command(*args: str) -> tuple[str, list[str]]:
    """How to run `dolphin-desk ARGS` from inside the app (frozen or from source)."""
    if getattr(sys, "frozen", False):
        return sys.executable, list(args)
    return sys.executable, ["-m", "app.cli", *args]


def converter_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "onnxruntime_genai", "transformers"))


class WelcomePage(QWidget):
    bundle_chosen = Signal(str)

    def __init__(self, data_dir: Path, hub_repo: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("welcome")
        self._data_dir = data_dir
        self._process: QProcess | None = None
        self._job_out: Path | None = None
        outer = QVBoxLayout(self)
        outer.setContentsMargins(48, 40, 48, 40)
        outer.setSpacing(14)
        title = QLabel("Welcome to Dolphin Desk")
        title.setObjectName("welcomeTitle")
        outer.addWidget(title)
        self.banner = Banner()
        outer.addWidget(self.banner)
        intro = QLabel(
            "Dolphin Desk answers questions about your own files, offline. It needs a <b>model bundle</b>: "
            "a folder with Nexa AI's Dolphin model converted for ONNX Runtime — a small encoder that compresses "
            "each piece of a document into 32 memory vectors, and a 7B decoder that answers from those memories. "
            "Nothing you add ever leaves this computer."
        )
        intro.setWordWrap(True)
        intro.setTextFormat(Qt.TextFormat.RichText)
        outer.addWidget(intro)
        self.choose = self._card(
            outer, "I have a model bundle", "Choose the folder that holds manifest.json.", "Choose bundle folder…"
        )
        self.convert = self._card(
            outer,
            "I downloaded the Dolphin checkpoint",
            "Convert a NexaAIDev/Dolphin (or Squid) folder into a bundle. Takes a few minutes.",
            "Convert checkpoint…",
        )
        row = QHBoxLayout()
        self.repo = QLineEdit(hub_repo)
        self.repo.setToolTip("Hugging Face repository id")
        row.addWidget(self.repo, 1)
        self.download = self._card(
            outer,
            "Download it for me",
            "Download the checkpoint from the Hugging Face hub (about 16 GB, resumable), then convert it.",
            "Download and convert",
            extra=row,
        )
        self.status = QLabel("")
        self.status.setObjectName("jobStatus")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        outer.addWidget(self.status)
        job = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.hide()
        self.cancel = QPushButton("Cancel")
        self.cancel.hide()
        job.addWidget(self.progress, 1)
        job.addWidget(self.cancel)
        outer.addLayout(job)
        outer.addStretch(1)
        self.choose.clicked.connect(self._choose_bundle)
        self.convert.clicked.connect(self._choose_checkpoint)
        self.download.clicked.connect(self._start_download)
        self.cancel.clicked.connect(self._cancel)

    def _card(
        self, layout: QVBoxLayout, heading: str, text: str, action: str, extra: QHBoxLayout | None = None
    ) -> QPushButton:
        card = QFrame()
        card.setObjectName("card")
        inner = QHBoxLayout(card)
        inner.setContentsMargins(16, 12, 16, 12)
        words = QVBoxLayout()
        head = QLabel(f"<b>{heading}</b>")
        body = QLabel(text)
        body.setWordWrap(True)
        body.setObjectName("hint")
        words.addWidget(head)
        words.addWidget(body)
        if extra is not None:
            words.addLayout(extra)
        inner.addLayout(words, 1)
        button = QPushButton(action)
        inner.addWidget(button)
        layout.addWidget(card)
        return button

    def show_message(self, text: str) -> None:
        """Progress and outcomes of a job; problems go to the banner (`show_error`)."""
        self.status.setText(text)

    def show_error(self, text: str, details: str = "") -> None:
        self.banner.show_message(text, details)

    # choose ---------------------------------------------------------------------------------

    def _choose_bundle(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a Dolphin Desk model bundle")
        if path:
            self.bundle_chosen.emit(path)

    # convert / download ---------------------------------------------------------------------

    def _busy(self, busy: bool) -> None:
        for button in (self.choose, self.convert, self.download):
            button.setEnabled(not busy)
        self.progress.setVisible(busy)
        self.cancel.setVisible(busy)

    def _choose_checkpoint(self) -> None:
        source = QFileDialog.getExistingDirectory(self, "Choose the downloaded Dolphin checkpoint folder")
        if source:
            self.start_conversion(source)

    def choose_destination(self, title: str, default: Path) -> Path | None:
        """Where a large result goes (a download is ~16 GB, a bundle ~6 GB): the user decides,
        starting from a folder in the data folder."""
        default.mkdir(parents=True, exist_ok=True)
        chosen = QFileDialog.getExistingDirectory(self, title, str(default))
        return Path(chosen) if chosen else None

    def start_conversion(self, source: str) -> None:
        if not converter_available():
            self.show_error(CONVERTER_HELP)
            return
        where = self.choose_destination("Where should the model bundle go? (about 6 GB)", self._data_dir / "bundles")
        if where is None:
            self.show_message("Conversion not started: no folder was chosen for the bundle.")
            return
        out = where / f"{Path(source).name}-int4"
        self._job_out = out
        self._run_job("convert", [source, str(out), "--force"], f"Converting {Path(source).name}…")

    def _start_download(self) -> None:
        repo = self.repo.text().strip()
        if repo.count("/") != 1:
            self.show_error("Enter a Hugging Face repository id such as NexaAIDev/Squid.")
            return
        where = self.choose_destination(
            f"Where should {repo} be downloaded to? (about 16 GB)", self._data_dir / "checkpoints"
        )
        if where is None:
            self.show_message("Download not started: no folder was chosen for it.")
            return
        dest = where / repo.replace("/", "--")
        self._job_out = dest
        self._run_job("download", [repo, str(dest)], f"Downloading {repo}…")

    def _run_job(self, command: str, args: list[str], message: str) -> None:
        program, arguments = cli_command(command, *args)
        self._process = QProcess(self)
        self._process.setProgram(program)
        self._process.setArguments(arguments)
        self._process.readyReadStandardError.connect(self._read_progress)
        self._process.finished.connect(lambda code, _status, c=command: self._job_finished(c, code))
        self._job_error = ""
        self.progress.setRange(0, 0)
        self._busy(True)
        self.banner.show_message("")
        self.show_message(message)
        self._process.start()

    def _read_progress(self) -> None:
        if self._process is None:
            return
        for line in bytes(self._process.readAllStandardError()).decode(errors="replace").splitlines():
            if line.startswith("download: "):
                done, total = (int(x) for x in line.split()[1:3])
                if total:
                    self.progress.setRange(0, 1000)
                    self.progress.setValue(int(1000 * done / total))
                    self.progress.setFormat(f"{done / 1e9:.2f} of {total / 1e9:.2f} GB")
            elif line.startswith("convert: "):
                self.show_message("Converting: " + line.removeprefix("convert: "))
            elif line.startswith("dolphin-desk: error: "):
                self._job_error = line.removeprefix("dolphin-desk: error: ")

    def _cancel(self) -> None:
        if self._process is not None:
            self._process.kill()

    def _job_finished(self, command: str, code: int) -> None:
        self._read_progress()
        self._busy(False)
        self._process = None
        if code != 0:
            reason = self._job_error or ("cancelled" if code in (9, -9, 62097) else f"exit status {code}")
            self.show_message("")
            self.show_error(f"The {command} did not finish: {reason}. You can start it again; downloads resume.")
            return
        if command == "download" and self._job_out is not None:
            self.start_conversion(str(self._job_out))
        elif command == "convert" and self._job_out is not None:
            self.show_message("Conversion finished.")
            self.bundle_chosen.emit(str(self._job_out))
