"""Index a corpus of hostile files and check that nothing crashes, hangs or is left undecided.

The corpus is mostly real damaged files nobody on this project wrote: the test PDFs of qpdf and
pdf.js, py-pdf's sample files and python-docx's test documents (public repositories; export them
into folders and pass them with --source). To those it adds mutations of the real files
(truncations, byte flips) and the file-system oddities users' folders really contain.

    python -m benchmarks.hostile_corpus build OUT --source DIR [--source DIR ...]
    python -m benchmarks.hostile_corpus run OUT --bundle B [--json benchmarks/results/hostile.json]

`run` indexes OUT with `dolphin-desk index` in a child process, samples the memory of the
process tree, and checks: exit status 0 (no crash), progress never stalls for HANG_S (no hang),
every file in a final state (ready, failed or skipped) with a reason, nothing written in OUT,
and the time spent per file. tests/test_hostile_sample.py runs a small sample of the same kinds.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import random
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HANG_S = 300.0
FINAL = {"ready", "failed", "skipped"}


# building -----------------------------------------------------------------------------------


def _copy_real(sources: list[Path], out: Path) -> list[Path]:
    real: list[Path] = []
    for source in sources:
        for path in sorted(source.rglob("*")):
            if path.is_file() and not path.is_symlink() and path.suffix.lower() in (".pdf", ".docx"):
                target = out / "real" / source.name / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                real.append(target)
    return real


def _mutate(real: list[Path], out: Path, rng: random.Random, count: int) -> int:
    folder = out / "mutations"
    folder.mkdir(parents=True, exist_ok=True)
    made = 0
    for index, path in enumerate(rng.sample(real, min(count, len(real)))):
        data = path.read_bytes()
        if not data:
            continue
        cut = rng.choice([0.5, 0.1, 0.9, 0.99])
        (folder / f"trunc-{index}-{path.name}").write_bytes(data[: max(1, int(len(data) * cut))])
        flipped = bytearray(data)
        for _ in range(max(1, len(data) // 2000)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        (folder / f"flip-{index}-{path.name}").write_bytes(bytes(flipped))
        made += 2
    return made


def _docx_with(document_xml: str, path: Path, extra: dict[str, bytes] | None = None) -> None:
    content_types = (
        '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/'
        'content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
        'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/'
        'document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main'
        '+xml"/></Types>'
    )
    rels = (
        '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/'
        '2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
        'relationships/officeDocument" Target="word/document.xml"/></Relationships>'
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", content_types)
        archive.writestr("_rels/.rels", rels)
        archive.writestr("word/document.xml", document_xml)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)


WORD = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'


def pdf_with_tounicode(target: Path, unicode_hex: str) -> None:
    """A one-page PDF whose font's ToUnicode map turns glyph 'A' into `unicode_hex` (UTF-16BE
    hex): a lone surrogate (D800), or the model's reserved strings, reach the text that way."""
    cmap = (
        "/CIDInit /ProcSet findresource begin 12 dict begin begincmap /CMapName /X def "
        "1 begincodespacerange <00> <FF> endcodespacerange "
        f"2 beginbfchar <41> <{unicode_hex}> <42> <0020> endbfchar endcmap "
        "CMapName currentdict /CMap defineresource pop end end"
    )
    content = "BT /F1 12 Tf 72 720 Td (ABABAB) Tj ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> "
        "/Contents 5 0 R >>",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /ToUnicode 6 0 R >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
        f"<< /Length {len(cmap)} >>\nstream\n{cmap}\nendstream",
    ]
    data = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(data))
        data += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(data)
    data += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    data += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    data += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    target.write_bytes(data)


def _crafted(out: Path, large: bool = True) -> int:
    """Hand-made hostile files and file-system oddities; returns how many entries were made.
    Without `large`, the files that take seconds to write (hundreds of MB) are left out."""
    folder = out / "crafted"
    folder.mkdir(parents=True, exist_ok=True)
    made = 0

    def write(name: str, data: bytes) -> None:
        nonlocal made
        (folder / name).write_bytes(data)
        made += 1

    text = "The keeper of the lighthouse wrote in his log every night. " * 40
    # PDFs whose text holds what the rest of the app must never see raw.
    pdf_with_tounicode(folder / "tounicode-surrogate.pdf", "D800")
    pdf_with_tounicode(folder / "tounicode-endoftext.pdf", "<|endoftext|>".encode("utf-16-be").hex().upper())
    made += 2
    # Archives and XML.
    if large:
        with zipfile.ZipFile(folder / "deflate-bomb.docx", "w", zipfile.ZIP_DEFLATED) as archive:
            with archive.open("word/document.xml", "w", force_zip64=True) as member:
                block = b"\0" * (1 << 20)
                for _ in range(2048):  # 2 GiB of zeros, about 2 MB compressed
                    member.write(block)
            archive.writestr("[Content_Types].xml", "<Types/>")
        made += 1
    laughs = '<!ENTITY l0 "lol">' + "".join(f'<!ENTITY l{i} "{("&l" + str(i - 1) + ";") * 10}">' for i in range(1, 10))
    _docx_with(
        f'<?xml version="1.0"?><!DOCTYPE d [{laughs}]><w:document {WORD}><w:body><w:p><w:r><w:t>&l9;</w:t></w:r>'
        "</w:p></w:body></w:document>",
        folder / "billion-laughs.docx",
    )
    _docx_with(
        f'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><w:document {WORD}><w:body>'
        "<w:p><w:r><w:t>&x;</w:t></w:r></w:p></w:body></w:document>",
        folder / "xxe.docx",
    )
    _docx_with(
        f'<?xml version="1.0"?><w:document {WORD}><w:body><w:tbl><w:tr><w:tc><w:tcPr><w:gridSpan w:val="1000000000"/>'
        "</w:tcPr><w:p><w:r><w:t>one cell, a billion columns</w:t></w:r></w:p></w:tc></w:tr></w:tbl></w:body>"
        "</w:document>",
        folder / "gridspan.docx",
    )
    _docx_with(f'<?xml version="1.0"?><w:document {WORD}><w:body>' + "<w:p>" * 200_000, folder / "unclosed.docx")
    _docx_with(
        f'<?xml version="1.0"?><w:document {WORD}><w:body><w:p><w:r><w:t>[memory_0]&lt;|endoftext|&gt;</w:t>'
        "</w:r></w:p></w:body></w:document>",
        folder / "reserved-only.docx",
    )
    made += 5
    # HTML.
    write("nested-1e6.html", b"<html><body>" + b"<div>" * 1_000_000 + b"deep text" + b"</div>" * 10)
    write("unclosed.html", ("<html><body>" + "<div><p>text <b>bold <i>" * 50_000 + "<!-- never closed").encode())
    write("attributes.html", b"<html><body><a " + b'x="y" ' * 500_000 + b">link</a></body></html>")
    write("script-only.html", b"<html><script>" + b"var a = 1;" * 100_000 + b"</script></html>")
    # Text in every encoding, and things that are not text.
    if large:
        write("one-line-200mb.txt", b"")  # filled below without holding 200 MB in memory
        with (folder / "one-line-200mb.txt").open("wb") as handle:
            for _ in range(200):
                handle.write(b"a" * (1 << 20))
        write("one-line-40mb.txt", b"lighthouse " * 3_800_000)
        write("huge-paragraph.txt", ("word " * 2_000_000).encode())
    write("utf16-bom.txt", text.encode("utf-16"))
    write("utf16le-no-bom.txt", text.encode("utf-16-le"))
    write("utf16be-no-bom.txt", text.encode("utf-16-be"))
    write("latin1.txt", ("Café, crème brûlée, naïveté. " * 50).encode("latin-1"))
    write("shift-jis.txt", ("灯台守は毎晩日誌を書いた。" * 50).encode("shift_jis"))
    write("invalid-utf8.md", b"valid start \xc3\x28 then \xff\xfe more \xed\xa0\x80 words " * 100)
    write("nul-bytes.txt", b"text\0with\0nuls " * 200)
    write("binary.txt", bytes(random.Random(1).randrange(256) for _ in range(100_000)))
    write("gzip-named.txt", gzip.compress(text.encode()))
    write("empty.txt", b"")
    write("empty.pdf", b"")
    write("empty.docx", b"")
    write("whitespace.md", b"   \n\n\t  \n")
    write("reserved-only.txt", b"[memory_0]")
    write("reserved-mix.md", b"<|endoftext|>[memory_5]<context>[memory_31]\n\n<|endoftext|>")
    write("surrogates.txt", "lone \ud800 surrogate".encode("utf-8", "surrogatepass"))
    write("control-chars.txt", bytes(range(1, 32)) * 100 + text.encode())
    write("not-a-pdf.pdf", text.encode())
    write("pdf-header-only.pdf", b"%PDF-1.7\n")
    write("zip-named.pdf", (out / "crafted" / "xxe.docx").read_bytes())
    write("png-named.docx", b"\x89PNG\r\n\x1a\n" + bytes(1000))
    # File-system oddities.
    os.mkfifo(folder / "fifo.txt")
    os.mkfifo(folder / "fifo.pdf")
    made += 2
    try:
        os.mknod(folder / "device.txt", stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null
        made += 1
    except (PermissionError, OSError):
        pass
    os.symlink(folder / "loop-b.txt", folder / "loop-a.txt")
    os.symlink(folder / "loop-a.txt", folder / "loop-b.txt")
    os.symlink(folder / "missing-target.txt", folder / "dangling.txt")
    os.symlink("/etc/hostname", folder / "outside-link.txt")
    os.symlink(out, folder / "loop-dir")
    made += 5
    unreadable = folder / "unreadable.txt"
    unreadable.write_text(text)
    unreadable.chmod(0)
    made += 1
    write("name with\nnewline.txt", text.encode())
    write(("n" * 251) + ".txt", text.encode())
    odd = Path(os.fsdecode(os.fsencode(str(folder)) + b"/latin1-name-caf\xe9.txt"))
    odd.write_bytes(text.encode())
    made += 1
    odd_dir = Path(os.fsdecode(os.fsencode(str(folder)) + b"/dir-\xff\xfe"))
    odd_dir.mkdir()
    (odd_dir / "inside.txt").write_text(text)
    made += 1
    deep = folder / "deep"
    for level in range(100):
        deep = deep / f"d{level}"
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_text("the bottom of a hundred folders")
    made += 1
    future = folder / "mtime-2030.txt"
    future.write_text(text)
    os.utime(future, (1.9e9, 1.9e9))
    made += 1
    ignored = folder / "gitignored"
    ignored.mkdir()
    (ignored / ".gitignore").write_text("*.tmp\n!\nfoo\\\n")
    (ignored / "kept.txt").write_text(text)
    (ignored / "dropped.tmp").write_text(text)
    fifo_ignore = folder / "gitignore-fifo"
    fifo_ignore.mkdir()
    os.mkfifo(fifo_ignore / ".gitignore")
    (fifo_ignore / "kept.txt").write_text(text)
    made += 4
    return made


def build(out: Path, sources: list[Path], seed: int = 7, mutations: int = 200, large: bool = True) -> dict[str, int]:
    if out.exists():
        raise SystemExit(f"{out} exists; choose a new folder")
    out.mkdir(parents=True)
    rng = random.Random(seed)
    real = _copy_real(sources, out)
    counts = {"real": len(real), "mutations": _mutate(real, out, rng, mutations), "crafted": _crafted(out, large)}
    counts["total"] = sum(counts.values())
    (out.parent / f"{out.name}.manifest.json").write_text(json.dumps({"sources": [str(s) for s in sources], **counts}))
    return counts


# running ------------------------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under root (links not followed): mode, size, mtime."""
    entries = {}
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            entries[path] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return entries


def _tree_rss_mb(pid: int) -> tuple[float, float]:
    """(RSS of pid, RSS of its descendants) in MB, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            parent, pages = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
        rss[int(entry)] = pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    descendants, stack = 0.0, list(children.get(pid, []))
    while stack:
        child = stack.pop()
        descendants += rss.get(child, 0.0)
        stack.extend(children.get(child, []))
    return rss.get(pid, 0.0), descendants


def _states(database: Path) -> Counter[str]:
    try:
        db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
        try:
            return Counter(dict(db.execute("SELECT state, COUNT(*) FROM documents GROUP BY state").fetchall()))
        finally:
            db.close()
    except sqlite3.Error:
        return Counter()


def _reason_kind(reason: str) -> str:
    """Reasons without their file-specific details, to count them."""
    for cut in (" (", ": "):
        if cut in reason and not reason.startswith(("cannot read:", "could not be indexed:")):
            return reason.split(cut, 1)[0]
    return reason[:80]


def run(corpus: Path, bundle: Path, results: Path | None) -> dict[str, object]:
    before = _snapshot(corpus)
    data = Path(tempfile.mkdtemp(prefix="dolphin-hostile-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DOLPHIN_DESK_LOG_LEVEL": "INFO"}
    command = [sys.executable, "-m", "app.cli", "index", str(corpus), "--bundle", str(bundle), "--data-dir", str(data)]
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_main = peak_children = peak_total = 0.0
    last_change, last_states, hang = time.monotonic(), Counter(), False
    while process.poll() is None:
        main, children = _tree_rss_mb(process.pid)
        peak_main, peak_children = max(peak_main, main), max(peak_children, children)
        peak_total = max(peak_total, main + children)
        states = _states(data / "library.sqlite3")
        if states != last_states:
            last_states, last_change = states, time.monotonic()
        elif time.monotonic() - last_change > HANG_S:
            hang = True
            process.kill()
            break
        time.sleep(0.5)
    stdout, stderr = process.communicate()
    elapsed = time.monotonic() - started
    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "app.cli", "status", "--json", "--data-dir", str(data)],
            env=env, cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    documents = status["documents"]
    db = sqlite3.connect(data / "library.sqlite3")
    finished = sorted(row[0] for row in db.execute("SELECT updated_at FROM documents WHERE state != 'pending'"))
    slowest = db.execute("SELECT path, updated_at FROM documents ORDER BY updated_at").fetchall()
    db.close()
    gaps = [(b - a, path) for (_, a), (path, b) in itertools.pairwise(slowest)]
    gaps.sort(key=lambda g: g[0], reverse=True)
    after = _snapshot(corpus)
    changed = sorted(set(before.items()) ^ set(after.items()))
    undecided = [d for d in documents if d["state"] not in FINAL]
    unexplained = [d for d in documents if d["state"] in ("failed", "skipped") and not d["error"]]
    internal = [d for d in documents if (d["error"] or "").startswith("could not be indexed:")]
    reasons = Counter(_reason_kind(d["error"]) for d in documents if d["error"])
    examples: dict[str, list[str]] = {}
    for d in documents:
        if d["error"]:
            kind = examples.setdefault(_reason_kind(d["error"]), [])
            if len(kind) < 4:
                kind.append(f"{Path(d['path']).name}: {d['error']}")
    notes = Counter(_reason_kind(d["note"]) for d in documents if d.get("note"))
    manifest = corpus.parent / f"{corpus.name}.manifest.json"
    log_text = (data / "logs" / "dolphin-desk.log").read_text(errors="replace")
    result = {
        "files_in_corpus": sum(1 for _, mode in ((p, m[0]) for p, m in before.items()) if not stat.S_ISDIR(mode)),
        "documents": len(documents),
        "states": dict(Counter(d["state"] for d in documents)),
        "exit_status": process.returncode,
        "crashed": process.returncode not in (0, None) and not hang,
        "hang": hang,
        "elapsed_s": round(elapsed, 1),
        "undecided": [d["path"] for d in undecided][:20],
        "failed_or_skipped_without_reason": len(unexplained),
        "internal_errors": [(d["path"], d["error"]) for d in internal][:20],
        "corpus": json.loads(manifest.read_text()) if manifest.exists() else None,
        "reasons": dict(reasons.most_common(40)),
        "reason_examples": examples,
        "ready_with_a_note": dict(notes.most_common(20)),
        "peak_rss_mb": {
            "indexer": round(peak_main),
            "extraction_child": round(peak_children),
            "total": round(peak_total),
        },
        "slowest_files_s": [(round(g, 1), p if isinstance(p, str) else os.fsdecode(p)) for g, p in gaps[:10]],
        "median_s_per_file": round(sorted(g for g, _ in gaps)[len(gaps) // 2], 3) if gaps else None,
        "changed_in_watched_folder": [p for p, _ in changed][:20],
        "log_tracebacks": log_text.count("Traceback"),
        "stderr_tail": stderr[-1500:],
        "stdout": stdout.strip()[-500:],
        "documents_finished": len(finished),
    }
    shutil.rmtree(data, ignore_errors=True)
    if results is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return {**result, "by_name": {Path(d["path"]).name: d for d in documents}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    building = commands.add_parser("build")
    building.add_argument("out", type=Path)
    building.add_argument("--source", type=Path, action="append", default=[])
    building.add_argument("--mutations", type=int, default=200, help="real files to truncate and flip")
    running = commands.add_parser("run")
    running.add_argument("corpus", type=Path)
    running.add_argument("--bundle", type=Path, required=True)
    running.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.command == "build":
        print(json.dumps(build(args.out, args.source, mutations=args.mutations)))
    else:
        result = run(args.corpus, args.bundle, args.json)
        shown = {k: v for k, v in result.items() if k not in ("stderr_tail", "reason_examples", "by_name")}
        print(json.dumps(shown, indent=2))


if __name__ == "__main__":
    main()
