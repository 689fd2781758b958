"""Which files of a watched folder are indexed: include/exclude globs, .gitignore, size limit."""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

DEFAULT_INCLUDE = [
    "*.txt",
    "*.md",
    "*.markdown",
    "*.rst",
    "*.org",
    "*.tex",
    "*.csv",
    "*.log",
    "*.html",
    "*.htm",
    "*.xhtml",
    "*.pdf",
    "*.docx",
    "*.py",
    "*.js",
    "*.ts",
    "*.tsx",
    "*.jsx",
    "*.java",
    "*.kt",
    "*.c",
    "*.h",
    "*.cc",
    "*.cpp",
    "*.hpp",
    "*.cs",
    "*.go",
    "*.rs",
    "*.rb",
    "*.php",
    "*.swift",
    "*.scala",
    "*.sh",
    "*.ps1",
    "*.sql",
    "*.r",
    "*.m",
    "*.lua",
    "*.json",
    "*.yaml",
    "*.yml",
    "*.toml",
    "*.ini",
    "*.cfg",
    "*.conf",
    "*.xml",
]
DEFAULT_EXCLUDE = [
    ".*",
    "node_modules",
    "__pycache__",
    "venv",
    ".venv",
    "env",
    "site-packages",
    "dist",
    "build",
    "target",
    "*.min.js",
    "*.lock",
    "package-lock.json",
]
DEFAULT_MAX_FILE_MB = 50
GITIGNORE_MAX_BYTES = 256 * 1024


def _matches(name: str, pattern: str) -> bool:
    """A name against a glob, ignoring case on every platform (`README*` finds `readme.md`,
    `*.PDF` finds `report.pdf`), as the file managers people type patterns for do."""
    return fnmatch.fnmatchcase(name.lower(), pattern.lower())


@dataclass
class FolderFilter:
    """Decides for one watched folder; patterns match a file or directory *name*."""

    root: Path
    include: list[str] = field(default_factory=lambda: list(DEFAULT_INCLUDE))
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    max_file_mb: float = DEFAULT_MAX_FILE_MB
    _gitignores: dict[Path, pathspec.PathSpec | None] = field(default_factory=dict)
    problems: dict[Path, str] = field(default_factory=dict)  # .gitignore path -> what is wrong with it

    def _excluded_name(self, name: str) -> bool:
        return any(_matches(name, pattern) for pattern in self.exclude)

    def _gitignore(self, directory: Path) -> pathspec.PathSpec | None:
        if directory not in self._gitignores:
            self._gitignores[directory] = self._read_gitignore(directory / ".gitignore")
        return self._gitignores[directory]

    def _read_gitignore(self, path: Path) -> pathspec.PathSpec | None:
        """The patterns of one .gitignore; a bad one is reported in `problems`, never fatal.

        Only a regular file is read (a FIFO named .gitignore would block forever), at most
        GITIGNORE_MAX_BYTES of it; a line git would reject is left out and named.
        """
        self.problems.pop(path, None)
        try:
            info = path.lstat()
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode):
            self.problems[path] = "not a regular file: its patterns are not used"
            return None
        try:
            with path.open("rb") as handle:
                data = handle.read(GITIGNORE_MAX_BYTES + 1)
        except OSError as exc:
            self.problems[path] = f"cannot be read ({exc.strerror or exc}): its patterns are not used"
            return None
        if len(data) > GITIGNORE_MAX_BYTES:
            self.problems[path] = f"larger than {GITIGNORE_MAX_BYTES // 1024} KB: only its beginning is used"
            data = data[:GITIGNORE_MAX_BYTES]
        lines = data.decode("utf-8", errors="replace").splitlines()
        try:
            return pathspec.GitIgnoreSpec.from_lines(lines)
        except Exception:  # noqa: BLE001 - pathspec raises several types for bad patterns; find the lines
            pass
        good, bad = [], []
        for number, line in enumerate(lines, start=1):
            try:
                pathspec.GitIgnoreSpec.from_lines([line])
                good.append(line)
            except Exception:  # noqa: BLE001 - see above
                bad.append(f"line {number} ({line.strip()[:40]!r})")
        self.problems[path] = "invalid pattern(s) ignored: " + ", ".join(bad[:5]) + (" …" if len(bad) > 5 else "")
        return pathspec.GitIgnoreSpec.from_lines(good)

    def forget_gitignore(self, directory: Path) -> None:
        self._gitignores.pop(directory, None)
        self.problems.pop(directory / ".gitignore", None)

    def _gitignored(self, path: Path, is_dir: bool) -> bool:
        for directory in [self.root, *[self.root / p for p in path.relative_to(self.root).parents if str(p) != "."]]:
            spec = self._gitignore(directory)
            if spec is None:
                continue
            relative = path.relative_to(directory).as_posix() + ("/" if is_dir else "")
            if spec.match_file(relative):
                return True
        return False

    def accepts_dir(self, path: Path) -> bool:
        if path == self.root:
            return True
        return not self._excluded_name(path.name) and not self._gitignored(path, is_dir=True)

    def in_scope(self, path: Path) -> bool:
        """Inside the folder, in no excluded directory, and matching the include list."""
        try:
            relative = path.relative_to(self.root)
        except ValueError:
            return False
        if any(self._excluded_name(part) for part in relative.parts[:-1]):
            return False
        if self._excluded_name(path.name) or not any(_matches(path.name, p) for p in self.include):
            return False
        return not any(
            self._gitignored(self.root / p, is_dir=True) for p in list(relative.parents)[:-1]
        ) and not self._gitignored(path, is_dir=False)

    def too_large(self, size: int) -> str | None:
        if size > self.max_file_mb * 1024 * 1024:
            return f"larger than the {self.max_file_mb:g} MB limit ({size / 1024 / 1024:.0f} MB)"
        return None

    def walk(self) -> list[Path]:
        """Every file in scope, without following directory symlinks (no loops)."""
        found: list[Path] = []
        for directory, dirnames, filenames in os.walk(self.root, followlinks=False, onerror=lambda _: None):
            base = Path(directory)
            dirnames[:] = sorted(d for d in dirnames if self.accepts_dir(base / d))
            found.extend(base / f for f in sorted(filenames) if self.in_scope(base / f))
        return found
