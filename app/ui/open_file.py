"""Open a cited document, at the cited page where the user's PDF viewer takes one.

`QDesktopServices.openUrl` opens a file with the desktop's default application but cannot pass
a page. On Linux the default PDF viewer is asked of `xdg-mime`, and the viewers that take a page
on their command line are started with it; elsewhere, and for other viewers, the file opens at
its first page and the window says so. A file that is gone, or one no application opens, is
reported rather than silently ignored.
"""

from __future__ import annotations

import enum
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QUrl
from PySide6.QtGui import QDesktopServices

# Desktop file of the default PDF viewer -> its command line for "open FILE at PAGE" (1-based).
PAGE_ARGUMENTS: dict[str, list[str]] = {
    "org.gnome.Evince": ["evince", "--page-index={page}", "{file}"],
    "evince": ["evince", "--page-index={page}", "{file}"],
    "atril": ["atril", "--page-index={page}", "{file}"],
    "xreader": ["xreader", "--page-index={page}", "{file}"],
    "org.kde.okular": ["okular", "--page", "{page}", "{file}"],
    "okularApplication_pdf": ["okular", "--page", "{page}", "{file}"],
    "org.pwmt.zathura": ["zathura", "--page={page}", "{file}"],
    "org.pwmt.zathura-pdf-mupdf": ["zathura", "--page={page}", "{file}"],
    "org.gnome.Papers": ["papers", "--page-index={page}", "{file}"],
}


class Opened(enum.Enum):
    AT_PAGE = "at_page"
    OPENED = "opened"
    MISSING = "missing"
    NO_APPLICATION = "no_application"


@dataclass(frozen=True)
class OpenResult:
    outcome: Opened
    message: str  # for the window; empty when there is nothing to say


def default_pdf_viewer() -> str | None:
    """The desktop file (without .desktop) of the default PDF application, on Linux."""
    if not sys.platform.startswith("linux") or shutil.which("xdg-mime") is None:
        return None
    try:
        found = subprocess.run(
            ["xdg-mime", "query", "default", "application/pdf"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    name = found.stdout.strip()
    return name.removesuffix(".desktop") or None


def open_document(path: Path, page: int | None = None) -> OpenResult:
    if not path.exists():
        return OpenResult(
            Opened.MISSING, f"{path} is not available: it was moved or deleted, or its drive is not connected."
        )
    if page and path.suffix.lower() == ".pdf":
        viewer = default_pdf_viewer()
        command = PAGE_ARGUMENTS.get(viewer or "")
        if command and shutil.which(command[0]):
            try:
                subprocess.Popen([part.format(page=page, file=str(path)) for part in command], start_new_session=True)
                return OpenResult(Opened.AT_PAGE, "")
            except OSError:
                pass
    if not QDesktopServices.openUrl(QUrl.fromLocalFile(str(path))):
        kind = f"{path.suffix} files" if path.suffix else "this file"
        return OpenResult(Opened.NO_APPLICATION, f"No application is set up to open {kind} ({path.name}).")
    if page and path.suffix.lower() == ".pdf":
        return OpenResult(Opened.OPENED, f"{path.name} opened at its first page: the cited text is on page {page}.")
    return OpenResult(Opened.OPENED, "")
