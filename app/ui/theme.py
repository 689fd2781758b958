"""Light or dark, as the system is: the style sheet and palette follow the desktop's colour scheme.

Qt reports the scheme (`QStyleHints.colorScheme`, Qt 6.5+) and signals when the user switches
it. The app's own colours live in two style sheets (assets/style.qss, assets/style-dark.qss);
the rest of the widgets take the Fusion style's palette, dark or light, so that text fields,
lists and menus match them on every platform.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication, QStyleFactory


def dark_palette() -> QPalette:
    palette = QPalette()
    colours = {
        QPalette.ColorRole.Window: "#1e2228",
        QPalette.ColorRole.WindowText: "#e6edf3",
        QPalette.ColorRole.Base: "#15181c",
        QPalette.ColorRole.AlternateBase: "#1b1f24",
        QPalette.ColorRole.ToolTipBase: "#2a3038",
        QPalette.ColorRole.ToolTipText: "#e6edf3",
        QPalette.ColorRole.PlaceholderText: "#7d8894",
        QPalette.ColorRole.Text: "#e6edf3",
        QPalette.ColorRole.Button: "#2a3038",
        QPalette.ColorRole.ButtonText: "#e6edf3",
        QPalette.ColorRole.BrightText: "#ff6b6b",
        QPalette.ColorRole.Link: "#7aa7ff",
        QPalette.ColorRole.Highlight: "#2f6fe0",
        QPalette.ColorRole.HighlightedText: "#ffffff",
    }
    for role, colour in colours.items():
        palette.setColor(role, QColor(colour))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6b7580"))
    return palette


class Theme:
    """Applies the scheme now and whenever the system switches."""

    def __init__(self, app: QApplication, assets: Path) -> None:
        self._app = app
        self._assets = assets
        self.scheme: Qt.ColorScheme | None = None
        app.styleHints().colorSchemeChanged.connect(self.apply)
        self.apply(app.styleHints().colorScheme())

    def apply(self, scheme: Qt.ColorScheme) -> None:
        dark = scheme == Qt.ColorScheme.Dark
        self.scheme = Qt.ColorScheme.Dark if dark else Qt.ColorScheme.Light
        sheet = self._assets / ("style-dark.qss" if dark else "style.qss")
        if dark:
            self._app.setStyle(QStyleFactory.create("Fusion"))
            self._app.setPalette(dark_palette())
        else:
            self._app.setPalette(self._app.style().standardPalette())
        if sheet.exists():
            self._app.setStyleSheet(sheet.read_text(encoding="utf-8"))
