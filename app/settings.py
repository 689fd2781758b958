"""User settings: a versioned JSON file in the data folder, with migrations. No Qt here."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from app.library.chunking import DEFAULT_CHUNK_TOKENS
from app.library.filters import DEFAULT_EXCLUDE, DEFAULT_INCLUDE
from app.library.retrieval import DEFAULT_TOP_K

SETTINGS_VERSION = 1
SETTINGS_NAME = "settings.json"


class SettingsError(Exception):
    """A setting value the app cannot use; one line naming the setting."""


@dataclass
class Settings:
    version: int = SETTINGS_VERSION
    bundle_path: str = ""
    provider: str = "auto"
    threads: int = 0
    top_k: int = DEFAULT_TOP_K
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    greedy: bool = False
    include_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_INCLUDE))
    exclude_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    pause_on_battery: bool = True
    hub_repo: str = "NexaAIDev/Squid"

    def validate(self) -> None:
        checks = [
            (self.provider in ("auto", "cpu", "cuda", "dml"), "execution provider must be auto, cpu, cuda or dml"),
            (0 <= self.threads <= 512, "threads must be 0 (all cores) or a positive number"),
            (1 <= self.top_k <= 16, "memory blocks per answer must be between 1 and 16"),
            (32 <= self.chunk_tokens <= 2048, "chunk size must be between 32 and 2048 tokens"),
            (1 <= self.max_new_tokens <= 8192, "maximum answer length must be between 1 and 8192 tokens"),
            (0 < self.temperature <= 5, "temperature must be above 0 and at most 5"),
            (0 < self.top_p <= 1, "top-p must be above 0 and at most 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)


def _migrate(data: dict) -> dict:
    """Older files are upgraded key by key; unknown keys are dropped, missing ones defaulted."""
    version = int(data.get("version", 1))
    if version > SETTINGS_VERSION:
        raise SettingsError(f"settings were written by a newer Dolphin Desk (version {version})")
    data["version"] = SETTINGS_VERSION
    return data


def load_settings(data_dir: Path) -> tuple[Settings, str | None]:
    """The saved settings, or defaults plus a note saying why the file could not be used."""
    path = Path(data_dir) / SETTINGS_NAME
    if not path.exists():
        return Settings(), None
    try:
        data = _migrate(json.loads(path.read_text(encoding="utf-8")))
        known = {f.name for f in fields(Settings)}
        settings = Settings(**{k: v for k, v in data.items() if k in known})
        settings.validate()
        return settings, None
    except (ValueError, TypeError, SettingsError) as exc:
        backup = path.with_suffix(".json.bad")
        os.replace(path, backup)
        return Settings(), f"settings could not be read ({exc}); defaults are in use and the old file is {backup.name}"


def save_settings(data_dir: Path, settings: Settings) -> None:
    """Atomic: a crash mid-write leaves the previous file, never half of one."""
    settings.validate()
    path = Path(data_dir) / SETTINGS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(asdict(settings), indent=2), encoding="utf-8")
    os.replace(temporary, path)
