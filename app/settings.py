"""User settings: one declared schema, a versioned JSON file in the data folder. No Qt here.

Each setting is declared once (`SCHEMA`): its type, default, range or choices, the label people
see, and what a change requires (`Effect`). The settings dialog builds its fields from it, the
command line takes its defaults and limits from it, and the app decides from it whether a change
means nothing, a scan, re-chunking or reloading the model.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from app.library.chunking import DEFAULT_CHUNK_TOKENS
from app.library.filters import DEFAULT_EXCLUDE, DEFAULT_INCLUDE
from app.library.ocr import IMAGE_PATTERNS
from app.library.retrieval import DEFAULT_TOP_K
from inference.bundle import PROVIDERS

# 2: images became documents (read by OCR); an include list saved as the old default gains them.
SETTINGS_VERSION = 2
SETTINGS_NAME = "settings.json"


class SettingsError(Exception):
    """A setting value the app cannot use; one line naming the setting."""


class NewerSettingsError(SettingsError):
    """The settings file was written by a newer app: it is refused and left as it is, as a newer
    library database is."""


class Effect(Enum):
    """What changing a setting requires."""

    NONE = "none"  # read at the next use (answer length, temperature, ...)
    RESCAN = "rescan"  # folders are scanned again: newly excluded files leave, included ones come
    RECHUNK = "rechunk"  # documents are chunked again in the background; unchanged chunks keep memories
    RELOAD_MODEL = "reload"  # the model bundle is loaded again
    # Documents whose reading depends on it are read again: turning OCR on reads the scanned PDFs
    # and images it had skipped (`app.library.ocr.OCR_OFF` is in their reason); turning it off
    # applies to documents read from then on (those already read by OCR keep their text).
    REREAD = "reread"


@dataclass(frozen=True)
class SettingSpec:
    name: str
    label: str
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    effect: Effect = Effect.NONE
    unit: str = ""

    def check(self, value: Any) -> str | None:
        """Why `value` is not acceptable, or None."""
        kind = type(self.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"{self.label.lower()} must be {kind.__name__}, not {value!r}"
        if kind is list and not all(isinstance(item, str) for item in value):
            return f"{self.label.lower()} must be a list of text patterns"
        if self.choices is not None and value not in self.choices:
            return f"{self.label.lower()} must be one of {', '.join(self.choices)}"
        if self.minimum is not None and value < self.minimum:
            return f"{self.label.lower()} must be at least {self.minimum:g}{self.unit}"
        if self.maximum is not None and value > self.maximum:
            return f"{self.label.lower()} must be at most {self.maximum:g}{self.unit}"
        return None


SCHEMA: tuple[SettingSpec, ...] = (
    SettingSpec("bundle_path", "Model bundle", "", effect=Effect.RELOAD_MODEL),
    SettingSpec("provider", "Execution provider", "auto", choices=PROVIDERS, effect=Effect.RELOAD_MODEL),
    SettingSpec("threads", "Threads", 0, 0, 512, effect=Effect.RELOAD_MODEL),
    SettingSpec("top_k", "Memory blocks per answer", DEFAULT_TOP_K, 1, 16),
    SettingSpec("chunk_tokens", "Chunk size", DEFAULT_CHUNK_TOKENS, 32, 2048, effect=Effect.RECHUNK, unit=" tokens"),
    SettingSpec("max_new_tokens", "Maximum answer length", 256, 1, 8192, unit=" tokens"),
    SettingSpec("temperature", "Temperature", 0.7, 0.05, 5.0),
    SettingSpec("top_p", "Top-p", 0.9, 0.01, 1.0),
    SettingSpec("greedy", "Greedy decoding", False),
    SettingSpec("include_patterns", "Include patterns", list(DEFAULT_INCLUDE), effect=Effect.RESCAN),
    SettingSpec("exclude_patterns", "Exclude patterns", list(DEFAULT_EXCLUDE), effect=Effect.RESCAN),
    SettingSpec("pause_on_battery", "Pause indexing on battery", True),
    # One multilingual model (Latin scripts, Chinese, Japanese): no language to choose (app/library/ocr.py).
    SettingSpec("ocr", "Read scans and images (OCR)", True, effect=Effect.REREAD),
    SettingSpec("hub_repo", "Hub repository", "NexaAIDev/Squid"),
)
SPECS = {spec.name: spec for spec in SCHEMA}


def spec(name: str) -> SettingSpec:
    return SPECS[name]


def _default(name: str) -> Any:
    return SPECS[name].default


@dataclass
class Settings:
    version: int = SETTINGS_VERSION
    bundle_path: str = _default("bundle_path")
    provider: str = _default("provider")
    threads: int = _default("threads")
    top_k: int = _default("top_k")
    chunk_tokens: int = _default("chunk_tokens")
    max_new_tokens: int = _default("max_new_tokens")
    temperature: float = _default("temperature")
    top_p: float = _default("top_p")
    greedy: bool = _default("greedy")
    include_patterns: list[str] = field(default_factory=lambda: list(SPECS["include_patterns"].default))
    exclude_patterns: list[str] = field(default_factory=lambda: list(SPECS["exclude_patterns"].default))
    pause_on_battery: bool = _default("pause_on_battery")
    ocr: bool = _default("ocr")
    hub_repo: str = _default("hub_repo")

    def validate(self) -> None:
        for setting in SCHEMA:
            problem = setting.check(getattr(self, setting.name))
            if problem:
                raise SettingsError(problem)


def effects(old: Settings, new: Settings) -> set[Effect]:
    """What applying `new` over `old` requires (empty: nothing changed)."""
    return {s.effect for s in SCHEMA if getattr(old, s.name) != getattr(new, s.name)}


def _migrate(data: dict) -> dict:
    """Older files are upgraded key by key; unknown keys are dropped, missing ones defaulted."""
    version = int(data.get("version", 1))
    if version > SETTINGS_VERSION:
        raise NewerSettingsError(
            f"the settings were written by a newer Dolphin Desk (version {version}, this version knows "
            f"{SETTINGS_VERSION}): update the app; the settings were not changed"
        )
    if version < 2:
        # The file keeps the whole include list, so the default growing does not reach it: a list
        # that was the version-1 default is what the user never chose to change, and it gets the
        # image patterns the default gained. A list the user edited stays as they left it.
        include = data.get("include_patterns")
        if isinstance(include, list) and sorted(include) == sorted(_VERSION_1_INCLUDE):
            data["include_patterns"] = [*include, *(p for p in IMAGE_PATTERNS if p not in include)]
    data["version"] = SETTINGS_VERSION
    return data


_VERSION_1_INCLUDE = [p for p in DEFAULT_INCLUDE if p not in IMAGE_PATTERNS]


def load_settings(data_dir: Path) -> tuple[Settings, str | None]:
    """The saved settings, or defaults plus a note saying why a damaged file could not be used
    (it is kept beside as settings.json.bad). A newer app's file raises NewerSettingsError."""
    path = Path(data_dir) / SETTINGS_NAME
    if not path.exists():
        return Settings(), None
    try:
        data = _migrate(json.loads(path.read_text(encoding="utf-8")))
        known = {f.name for f in fields(Settings)}
        settings = Settings(**{k: v for k, v in data.items() if k in known})
        settings.validate()
        return settings, None
    except NewerSettingsError:
        raise
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
