"""Where the app keeps its data: the platform's per-user data folder, never the watched folders."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "Dolphin Desk"


def default_data_dir() -> Path:
    override = os.environ.get("DOLPHIN_DESK_DATA_DIR")
    return Path(override) if override else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
