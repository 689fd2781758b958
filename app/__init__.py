"""Dolphin Desk: the application (a Qt-free core, and the Qt UI in app.ui)."""

__version__ = "0.2.0"
