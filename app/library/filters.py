"""Which files of a watched folder are indexed: include/exclude globs, .gitignore, the content of
files without an extension, size limit; and why each file that is not indexed is left out."""

from __future__ import annotations

import codecs
import fnmatch
import os
import re
import stat
from collections.abc import Iterable
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
    # Scans and photos of pages, read by OCR (app/library/ocr.py; a setting turns it off).
    "*.png",
    "*.jpg",
    "*.jpeg",
    "*.tif",
    "*.tiff",
    "*.webp",
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
SNIFF_BYTES = 8192  # how much of a file without an extension is read to tell text from binary
COUNT_LIMIT = 10_000  # entries looked at when counting the files of an excluded directory

# Why a file is left out (shown as "skipped: ..." next to it). The scan decides these from names
# and, for files without an extension, the first bytes; the file is never read further.
EXCLUDED_BY = "excluded by pattern"
NOT_A_DOCUMENT = "not a document type"
NOT_INCLUDED = f"{NOT_A_DOCUMENT} (no include pattern matches it)"
NOT_TEXT = f"{NOT_A_DOCUMENT} (no extension, and its content is not text)"
LINKED_FOLDER = "a link to a folder (links to folders are not followed)"
_LEFT_OUT = (EXCLUDED_BY, NOT_A_DOCUMENT, LINKED_FOLDER)
# Control characters that plain text does not hold (tab, new lines, form feed and escape it may).
_CONTROL = re.compile("[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f-\x9f\ufffd]")


def _matches(name: str, pattern: str) -> bool:
    """A name against a glob, ignoring case on every platform (`README*` finds `readme.md`,
    `*.PDF` finds `report.pdf`), as the file managers people type patterns for do."""
    return fnmatch.fnmatchcase(name.lower(), pattern.lower())


def is_left_out(reason: str | None) -> bool:
    """A reason the scan gives for not reading a file at all (its name, its folder, its kind), as
    opposed to one the indexer gives after reading it. Such a row is listed so people see why a
    file is missing, is never indexed, and is read once the patterns let it in."""
    return reason is not None and reason.startswith(_LEFT_OUT)


def has_no_extension(name: str) -> bool:
    """LICENSE, README, Makefile, GPL-3, and names whose only "extension" is a version number
    (Apache-2.0, LGPL-2.1): the name says nothing of the kind of file, so its content decides."""
    _, dot, suffix = name.lstrip(".").rpartition(".")
    return not dot or not suffix or suffix.isdigit()


def looks_like_text(sample: bytes) -> bool:
    """The start of a file reads as text: UTF-8 (a character cut at the end is fine) or a
    single-byte encoding, no NUL bytes, at most 5% control characters. A byte-order mark says
    UTF-16/32 (whose text has NULs); an empty file counts as text (the indexer says "empty")."""
    if sample.startswith((codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return True
    if b"\x00" in sample:
        return False
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        text = sample.decode("cp1252", errors="replace")
    return len(_CONTROL.findall(text)) <= 0.05 * len(text)


def _read_start(path: Path) -> bytes | None:
    """The first SNIFF_BYTES of a regular file; None for anything else or a file that cannot be
    read (the indexer then says why). Opened without blocking: a FIFO must never hang a scan."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            return None
        return os.read(descriptor, SNIFF_BYTES)
    except OSError:
        return None
    finally:
        os.close(descriptor)


def count_files(directory: Path, limit: int = COUNT_LIMIT) -> tuple[int, bool]:
    """(files, more): the files under a directory, without following links, looking at no more
    than `limit` entries (a .git or node_modules of 100,000 must not slow a scan down)."""
    files, seen, pending = 0, 0, [directory]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    seen += 1
                    if seen > limit:
                        return files, True
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(Path(entry.path))
                    else:
                        files += 1
        except OSError:
            continue
    return files, False


def pattern_problems(patterns: Iterable[str], kind: str) -> list[str]:
    """What is wrong with patterns a person typed ('include' or 'exclude'), one sentence each;
    empty when they are fine. fnmatch accepts nearly anything, so a mistake would otherwise
    silently match nothing."""
    problems = []
    for pattern in patterns:
        quoted = f"“{pattern}”"
        if "," in pattern:
            problems.append(f"{quoted} has a comma: separate patterns with spaces or new lines")
        elif "/" in pattern.rstrip("/") or "\\" in pattern:
            problems.append(
                f"{quoted} is a path: a pattern matches one file or folder name, such as “*.md” or “drafts”"
            )
        elif pattern.endswith("/") and kind == "include":
            problems.append(f"{quoted} names a folder: include patterns name files (a trailing / is for exclude)")
        elif re.search(r"\[[^\]]*$", pattern):
            problems.append(f"{quoted} opens a [ that is never closed")
    return problems


@dataclass
class Walk:
    """A folder as the scan sees it: the files to index, and what is left out with its reason
    (an excluded directory is one entry for everything in it)."""

    found: list[Path] = field(default_factory=list)
    left_out: dict[Path, str] = field(default_factory=dict)


@dataclass
class FolderFilter:
    """Decides for one watched folder; patterns match a file or directory *name*, and an exclude
    pattern ending in / matches directories only."""

    root: Path
    include: list[str] = field(default_factory=lambda: list(DEFAULT_INCLUDE))
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    max_file_mb: float = DEFAULT_MAX_FILE_MB
    _gitignores: dict[Path, pathspec.PathSpec | None] = field(default_factory=dict)
    problems: dict[Path, str] = field(default_factory=dict)  # .gitignore path -> what is wrong with it
    # path -> (size, mtime_ns, is text): files without an extension are read once, not every scan
    _text: dict[Path, tuple[int, int, bool]] = field(default_factory=dict)

    def _exclusion(self, name: str, is_dir: bool) -> str | None:
        """The first exclude pattern that matches the name, if any."""
        for pattern in self.exclude:
            if pattern.endswith("/"):
                if is_dir and _matches(name, pattern[:-1]):
                    return pattern
            elif _matches(name, pattern):
                return pattern
        return None

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

    def _gitignore_reason(self, path: Path, is_dir: bool) -> str | None:
        """'excluded by pattern *.log in sub/.gitignore' when a .gitignore at or above the path's
        directory (within the folder) ignores it."""
        relative_parent = path.parent.relative_to(self.root)
        directories = [self.root, *(self.root / p for p in reversed(relative_parent.parents[:-1]))]
        if relative_parent.parts:
            directories.append(path.parent)
        for directory in directories:
            spec = self._gitignore(directory)
            if spec is None:
                continue
            result = spec.check_file(path.relative_to(directory).as_posix() + ("/" if is_dir else ""))
            if result.include:
                where = (directory / ".gitignore").relative_to(self.root).as_posix()
                pattern = spec.patterns[result.index].pattern if result.index is not None else None
                return f"{EXCLUDED_BY} {pattern} in {where}" if pattern else f"excluded by {where}"
        return None

    def dir_reason(self, path: Path) -> str | None:
        """Why a directory (all of it) is left out; None: it is walked."""
        if path == self.root:
            return None
        pattern = self._exclusion(path.name, is_dir=True)
        if pattern is not None:
            return f"{EXCLUDED_BY} {pattern}"
        return self._gitignore_reason(path, is_dir=True)

    def file_reason(self, path: Path) -> str | None:
        """Why a file in a walked directory is left out; None: it is indexed."""
        pattern = self._exclusion(path.name, is_dir=False)
        if pattern is not None:
            return f"{EXCLUDED_BY} {pattern}"
        ignored = self._gitignore_reason(path, is_dir=False)
        if ignored is not None:
            return ignored
        if any(_matches(path.name, p) for p in self.include):
            return None
        if has_no_extension(path.name):
            return None if self._is_text(path) else NOT_TEXT
        return NOT_INCLUDED

    def _is_text(self, path: Path) -> bool:
        """Whether a file without an extension holds text; a file that cannot be looked at
        counts as text, so the indexer tries it and records why it cannot be read."""
        try:
            info = path.stat()
        except OSError:
            return True
        cached = self._text.get(path)
        if cached is not None and cached[:2] == (info.st_size, info.st_mtime_ns):
            return cached[2]
        sample = _read_start(path)
        verdict = True if sample is None else looks_like_text(sample)
        self._text[path] = (info.st_size, info.st_mtime_ns, verdict)
        return verdict

    def excluded_directory(self, path: Path) -> Path | None:
        """The outermost directory above `path` (inside the folder) that is left out: its one
        entry in the list stands for everything in it."""
        current = self.root
        for part in path.relative_to(self.root).parts[:-1]:
            current = current / part
            if self.dir_reason(current) is not None:
                return current
        return None

    def left_out_reason(self, path: Path) -> str | None:
        """Why a file is not indexed, whatever directory it is in; None: it is (or outside)."""
        try:
            directory = self.excluded_directory(path)
        except ValueError:
            return None
        return self.dir_reason(directory) if directory is not None else self.file_reason(path)

    def accepts_dir(self, path: Path) -> bool:
        return self.dir_reason(path) is None

    def in_scope(self, path: Path) -> bool:
        """Inside the folder, in no excluded directory, and a document (by name or content)."""
        try:
            return self.excluded_directory(path) is None and self.file_reason(path) is None
        except ValueError:
            return False

    def too_large(self, size: int) -> str | None:
        if size > self.max_file_mb * 1024 * 1024:
            return f"larger than the {self.max_file_mb:g} MB limit ({size / 1024 / 1024:.0f} MB)"
        return None

    def _directory_entry(self, path: Path, reason: str | None) -> str | None:
        """The one entry of a directory that is not walked: why, and how many files that
        leaves out (None for an excluded directory without files: nothing is left out)."""
        if path.is_symlink():
            return reason or LINKED_FOLDER
        files, more = count_files(path)
        if more:  # counting stopped: a round "at least"
            return f"{reason} ({files // 1000 * 1000 if files >= 1000 else files:,}+ files)"
        if not files:
            return None
        return f"{reason} ({files:,} file{'' if files == 1 else 's'})"

    def walk(self) -> Walk:
        """Every file to index, and everything left out with its reason, without following
        directory symlinks (no loops)."""
        walk = Walk()
        for directory, dirnames, filenames in os.walk(self.root, followlinks=False, onerror=lambda _: None):
            base = Path(directory)
            kept = []
            for name in sorted(dirnames):
                reason = self.dir_reason(base / name)
                if reason is None and not (base / name).is_symlink():
                    kept.append(name)
                    continue
                entry = self._directory_entry(base / name, reason)
                if entry is not None:
                    walk.left_out[base / name] = entry
            dirnames[:] = kept
            for name in sorted(filenames):
                reason = self.file_reason(base / name)
                if reason is None:
                    walk.found.append(base / name)
                else:
                    walk.left_out[base / name] = reason
        found = set(walk.found)
        self._text = {p: v for p, v in self._text.items() if p in found or p in walk.left_out}
        return walk
