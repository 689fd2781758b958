"""Question-answer sets from real FAQs nobody on this project wrote, fetched from Debian.

Each FAQ entry becomes one document holding the answer *without* its question, and the
question is asked: retrieval must find the answer's document. Built fresh from the packages
(apt-get download; nothing of the text is committed):

* `debian-faq`: the Debian GNU/Linux FAQ (debian-faq, English), 100+ questions.
* `tools-faq`: the Git FAQ (git-doc, gitfaq.txt) and the SQLite FAQ (sqlite3-doc, faq.html) in one
  library.
* `python-faq` (held out: never used to build or tune anything; `benchmarks/holdout.py` runs it
  through `dolphin-desk index` and `ask --json`): the Python 3.11 FAQ (python3.11-doc).

    python -m benchmarks.qa_sets OUT     # writes OUT/<set>/docs/*.txt and OUT/<set>/questions.json
"""

from __future__ import annotations

import gzip
import html
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

PACKAGES = {
    "debian-faq": ["debian-faq"],
    "tools-faq": ["git-doc", "sqlite3-doc"],
    "python-faq": ["python3.11-doc"],
}


@dataclass(frozen=True)
class QASet:
    name: str
    documents: dict[str, str]  # file name -> answer text
    questions: list[tuple[str, str]]  # (question, file name of its answer)

    def write(self, out: Path) -> Path:
        folder = out / self.name
        docs = folder / "docs"
        docs.mkdir(parents=True, exist_ok=True)
        for name, text in self.documents.items():
            (docs / name).write_text(text, encoding="utf-8")
        questions = [{"question": q, "document": d} for q, d in self.questions]
        (folder / "questions.json").write_text(json.dumps(questions, indent=1, ensure_ascii=False), encoding="utf-8")
        return folder


def fetch(packages: list[str], dest: Path) -> Path:
    """Download Debian packages and unpack them under dest/root (no root rights needed)."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", *packages], cwd=dest, check=True, capture_output=True)
    root = dest / "root"
    for deb in sorted(dest.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def _entry_name(prefix: str, used: set[str]) -> str:
    """Neutral names (entry-0042.txt): a name made from the question would hand it to retrieval."""
    name = f"{prefix}-{len(used) + 1:04}.txt"
    used.add(name)
    return name


def debian_faq(root: Path) -> QASet:
    text = gzip.decompress((root / "usr/share/doc/debian/FAQ/debian-faq.en.txt.gz").read_bytes()).decode()
    text = text.replace("\xa0", " ")
    body = text[text.index("\nChapter 1.") :]
    heading = re.compile(r"^(\d+\.\d+(?:\.\d+)*)\. (.+)$")
    entries: list[tuple[str, list[str]]] = []
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        match = heading.match(lines[i])
        if match:
            title = match.group(2)
            while i + 1 < len(lines) and lines[i + 1].strip() and not lines[i + 1].startswith(" "):
                i += 1
                title += " " + lines[i].strip()
            entries.append((title, []))
        elif lines[i].startswith("Chapter "):
            entries.append(("", []))
        elif entries:
            entries[-1][1].append(lines[i])
        i += 1
    return _qa_from_entries("debian-faq", entries)


def _qa_from_entries(name: str, entries: list[tuple[str, list[str]]]) -> QASet:
    """Entries whose title is a question become (answer document, question); the text of a
    following entry that is not a question (a subsection) joins the answer before it."""
    documents: dict[str, str] = {}
    questions: list[tuple[str, str]] = []
    used: set[str] = set()
    current: tuple[str, list[str]] | None = None
    for title, lines in [*entries, ("", [])]:
        if title.endswith("?") or not title:
            if current is not None:
                answer = "\n".join(line.strip() for line in current[1]).strip()
                answer = re.sub(r"\n{3,}", "\n\n", answer)
                if len(answer.split()) >= 8:
                    document = _entry_name("entry", used)
                    documents[document] = answer
                    questions.append((current[0], document))
            current = (title, list(lines)) if title.endswith("?") else None
        elif current is not None:
            current[1].extend(["", title, *lines])
    return QASet(name, documents, questions)


def git_faq(root: Path) -> list[tuple[str, list[str]]]:
    text = (root / "usr/share/doc/git-doc/gitfaq.txt").read_text(encoding="utf-8")
    entries: list[tuple[str, list[str]]] = []
    for block in re.split(r"\n\[\[[^\]]+\]\]\n", text)[1:]:
        title, _, rest = block.partition("::\n")
        answer = re.split(r"\n[A-Z][^\n]*\n-{3,}\n", rest)[0]
        entries.append((title.strip().replace("`", ""), answer.replace("\n+\n", "\n\n").splitlines()))
    return entries


def _strip_html(fragment: str) -> str:
    fragment = re.sub(r"<(br|p|li|pre|blockquote)[^>]*>", "\n", fragment, flags=re.I)
    return html.unescape(re.sub(r"<[^>]+>", "", fragment))


def sqlite_faq(root: Path) -> list[tuple[str, list[str]]]:
    page = (root / "usr/share/doc/sqlite3/faq.html").read_text(encoding="utf-8", errors="replace")
    entries = []
    for match in re.finditer(r"<p><b>\(\d+\)\s*(.*?)</b></p>\s*<blockquote>(.*?)</blockquote></li>", page, re.S):
        title = " ".join(_strip_html(match.group(1)).split())
        entries.append((title, _strip_html(match.group(2)).splitlines()))
    return entries


def tools_faq(root: Path) -> QASet:
    return _qa_from_entries("tools-faq", [*git_faq(root), ("", []), *sqlite_faq(root)])


def python_faq(root: Path) -> QASet:
    sources = root / "usr/share/doc/python3.11/html/_sources/faq"
    entries: list[tuple[str, list[str]]] = []
    for page in sorted(sources.glob("*.rst.txt")):
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            underline = i + 1 < len(lines) and re.fullmatch(r"([-=~^*])\1{3,}", lines[i + 1] or "")
            if underline and line.strip() and len(lines[i + 1]) >= len(line.strip()) - 2:
                entries.append((line.strip(), []))
            elif entries and not re.fullmatch(r"([-=~^*])\1{3,}", line or ""):
                entries[-1][1].append(line)
        entries.append(("", []))
    return _qa_from_entries("python-faq", entries)


BUILDERS = {"debian-faq": debian_faq, "tools-faq": tools_faq, "python-faq": python_faq}


def build(name: str, work: Path) -> QASet:
    return BUILDERS[name](fetch(PACKAGES[name], work / name))


def main() -> None:
    out = Path(sys.argv[1])
    names = sys.argv[2:] or ["debian-faq", "tools-faq"]
    with tempfile.TemporaryDirectory() as work:
        for name in names:
            qa = build(name, Path(work))
            folder = qa.write(out)
            print(f"{folder}: {len(qa.documents)} documents, {len(qa.questions)} questions")


if __name__ == "__main__":
    main()
