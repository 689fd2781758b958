"""Settings, folder patterns and About dialogs."""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.library.filters import pattern_problems
from app.settings import Settings, SettingsError, SettingSpec, spec
from inference.providers import LABELS, available_providers


def _spin(setting: SettingSpec) -> QSpinBox:
    """A spin box with the setting's range and unit (app/settings.py declares them)."""
    box = QSpinBox()
    box.setRange(int(setting.minimum or 0), int(setting.maximum or 2**31 - 1))
    if setting.unit:
        box.setSuffix(setting.unit)
    return box


class SettingsDialog(QDialog):
    def __init__(self, settings: Settings, data_dir: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setMinimumWidth(560)
        self._settings = settings
        form = QFormLayout()
        bundle_row = QHBoxLayout()
        self.bundle = QLineEdit(settings.bundle_path)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        bundle_row.addWidget(self.bundle, 1)
        bundle_row.addWidget(browse)
        form.addRow(spec("bundle_path").label, bundle_row)
        self.provider = QComboBox()
        available = available_providers()
        self.provider.addItem("Automatic (the bundle's own)", "auto")
        for name in [p for p in spec("provider").choices or () if p != "auto"]:
            suffix = "" if name in available else " — not available here"
            self.provider.addItem(LABELS[name] + suffix, name)
        self.provider.setCurrentIndex(max(0, self.provider.findData(settings.provider)))
        form.addRow(spec("provider").label, self.provider)
        self.threads = _spin(spec("threads"))
        self.threads.setSpecialValueText("All cores")
        self.threads.setValue(settings.threads)
        form.addRow(spec("threads").label, self.threads)
        self.top_k = _spin(spec("top_k"))
        self.top_k.setValue(settings.top_k)
        form.addRow(spec("top_k").label, self.top_k)
        self.chunk_tokens = _spin(spec("chunk_tokens"))
        self.chunk_tokens.setValue(settings.chunk_tokens)
        self.chunk_tokens.setToolTip(
            "Changing it re-chunks the library in the background; unchanged chunks keep their memories"
        )
        form.addRow(spec("chunk_tokens").label, self.chunk_tokens)
        self.max_new_tokens = _spin(spec("max_new_tokens"))
        self.max_new_tokens.setValue(settings.max_new_tokens)
        form.addRow(spec("max_new_tokens").label, self.max_new_tokens)
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(spec("temperature").minimum or 0.0, spec("temperature").maximum or 5.0)
        self.temperature.setSingleStep(0.05)
        self.temperature.setValue(settings.temperature)
        form.addRow(spec("temperature").label, self.temperature)
        self.greedy = QCheckBox("Greedy decoding (as the reference model was evaluated)")
        self.greedy.setChecked(settings.greedy)
        form.addRow("", self.greedy)
        # One pattern per line: a word-wrapped run of patterns breaks names like site-packages.
        self.include = QPlainTextEdit("\n".join(settings.include_patterns))
        self.include.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.include.setFixedHeight(96)
        self.include.setToolTip("Folders without patterns of their own follow these; a change scans them again")
        form.addRow(spec("include_patterns").label, self.include)
        self.exclude = QPlainTextEdit("\n".join(settings.exclude_patterns))
        self.exclude.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.exclude.setFixedHeight(96)
        form.addRow(spec("exclude_patterns").label, self.exclude)
        data = QLabel(data_dir)
        data.setToolTip("Set DOLPHIN_DESK_DATA_DIR or start with --data-dir to use another folder")
        form.addRow("Data folder", data)
        self.battery = QCheckBox("Pause indexing while on battery")
        self.battery.setChecked(settings.pause_on_battery)
        self.ocr = QCheckBox(spec("ocr").label)
        self.ocr.setToolTip(
            "Scanned PDF pages and images (png, jpg, tiff, webp) are read by OCR: slow, a few seconds a page"
        )
        self.ocr.setChecked(settings.ocr)
        form.addRow("", self.battery)
        form.addRow("", self.ocr)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self._accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)
        self.result_settings: Settings | None = None

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a model bundle")
        if path:
            self.bundle.setText(path)

    def values(self) -> Settings:
        return dataclasses.replace(
            self._settings,
            bundle_path=self.bundle.text().strip(),
            provider=self.provider.currentData(),
            threads=self.threads.value(),
            top_k=self.top_k.value(),
            chunk_tokens=self.chunk_tokens.value(),
            max_new_tokens=self.max_new_tokens.value(),
            temperature=round(self.temperature.value(), 2),
            greedy=self.greedy.isChecked(),
            include_patterns=self.include.toPlainText().split(),
            exclude_patterns=self.exclude.toPlainText().split(),
            pause_on_battery=self.battery.isChecked(),
            ocr=self.ocr.isChecked(),
        )

    def _accept(self) -> None:
        candidate = self.values()
        try:
            candidate.validate()
        except SettingsError as exc:
            QMessageBox.warning(self, "Settings", str(exc).capitalize())
            return
        problems = pattern_problems(candidate.include_patterns, "include")
        problems += pattern_problems(candidate.exclude_patterns, "exclude")
        if problems:
            QMessageBox.warning(self, "Settings", "\n".join(problems))
            return
        self.result_settings = candidate
        self.accept()


class _PatternList(QGroupBox):
    """One list of a folder's patterns: the Settings' (shown, not editable) or its own."""

    def __init__(self, title: str, own: list[str] | None, inherited: list[str], parent: QWidget | None = None) -> None:
        super().__init__(title, parent)
        self._inherited = " ".join(inherited)
        self._own = " ".join(own if own is not None else inherited)  # the Settings' as a start
        self.same = QCheckBox("Same as in Settings")
        self.same.setToolTip("Follow the Settings patterns, also when they change later")
        self.editor = QPlainTextEdit()
        self.editor.setFixedHeight(64)
        layout = QVBoxLayout(self)
        layout.addWidget(self.same)
        layout.addWidget(self.editor)
        self.same.setChecked(own is None)
        self.editor.setPlainText(self._inherited if own is None else self._own)
        self.editor.setEnabled(own is not None)
        self.same.toggled.connect(self._toggle)

    def _toggle(self, same: bool) -> None:
        """Back to the Settings' list keeps what was typed, should the box be unticked again."""
        if same:
            self._own = self.editor.toPlainText()
        self.editor.setPlainText(self._inherited if same else self._own)
        self.editor.setEnabled(not same)

    def patterns(self) -> list[str] | None:
        """None: follow the Settings."""
        return None if self.same.isChecked() else self.editor.toPlainText().split()


class FolderPatternsDialog(QDialog):
    """Which files of one folder are read: its own include and exclude patterns, each list
    either following Settings (shown, so people see what applies) or its own. Saving scans
    the folder again (the controller does that, not this dialog)."""

    def __init__(
        self,
        folder: Path,
        own: tuple[list[str] | None, list[str] | None],
        inherited: tuple[list[str], list[str]],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("folderPatterns")
        self.setWindowTitle(f"Patterns of “{folder.name or folder}”")
        self.setMinimumWidth(520)
        intro = QLabel(
            f"Which files of {folder} are read. Patterns match a file or folder name, separated by "
            "spaces, and ignore case (README*, *.PDF); an exclude pattern ending in / matches "
            "folders only. Files without an extension (LICENSE, Makefile) are read when they hold "
            "text. Saving scans the folder again; files left out are listed with the reason."
        )
        intro.setWordWrap(True)
        self.include = _PatternList("Include", own[0], inherited[0])
        self.exclude = _PatternList("Exclude", own[1], inherited[1])
        self.error = QLabel("")
        self.error.setObjectName("patternsError")
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #c62828")
        self.error.hide()
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self._accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        for widget in (intro, self.include, self.exclude, self.error, buttons):
            layout.addWidget(widget)
        self.result_patterns: tuple[list[str] | None, list[str] | None] | None = None

    def values(self) -> tuple[list[str] | None, list[str] | None]:
        return self.include.patterns(), self.exclude.patterns()

    def _accept(self) -> None:
        """Bad patterns are said in the dialog, which stays open to fix them."""
        include, exclude = self.values()
        problems = pattern_problems(include or [], "include") + pattern_problems(exclude or [], "exclude")
        if problems:
            self.error.setText("\n".join(f"⚠ {problem}" for problem in problems))
            self.error.show()
            return
        self.result_patterns = include, exclude
        self.accept()


def about_text(bundle: str | None) -> str:
    import onnxruntime

    from app import __version__

    try:
        import onnxruntime_genai

        genai = onnxruntime_genai.__version__
    except ImportError:
        genai = "not installed (needed only to convert models)"
    from PySide6 import __version__ as pyside

    return (
        f"<h3>Dolphin Desk {__version__}</h3>"
        "<p>Chat with your own files, offline. Built on Nexa AI's Dolphin architecture "
        "(arXiv 2408.15518): long context as a modality of its own.</p>"
        f"<p>Model bundle: {bundle or 'none'}<br>ONNX Runtime {onnxruntime.__version__} "
        f"({', '.join(onnxruntime.get_available_providers())})<br>ONNX Runtime GenAI {genai}<br>"
        f"Qt for Python {pyside} · Python {platform.python_version()} · {platform.system()} {platform.machine()}</p>"
    )
