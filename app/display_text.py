"""Model output made safe to show: no control characters, no images or raw HTML that act on their own.

An answer is text a model wrote from a user's documents, and documents can carry anything: a
PDF with a bidirectional override, a web page whose text says `<img src="file:///…">`. The chat
renders Markdown (Qt's importer, which also interprets inline HTML and loads images from local
paths as it lays the text out), so before it does:

* control characters go (C0 except tab and newline, DEL, C1), and so do the bidirectional
  embedding/override/isolate characters that can make text read differently from what it is;
* images become links (`[image: alt](url)`): nothing is loaded while laying out a message;
* raw HTML is escaped, so `<a href="file:///…">` or `<img>` shows as text;
* code spans and fenced code blocks are left as written (Markdown shows them literally anyway).

Links stay links; the chat asks before it opens one (app/ui/chat.py). Core module: no Qt.
"""

from __future__ import annotations

import re

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_IMAGE = re.compile(r"!\[([^\]]*)\](\(|\[)")
_HTML = re.compile(r"<(?=[A-Za-z/!?])")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})", re.MULTILINE)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)


def without_controls(text: str) -> str:
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def safe_markdown(text: str) -> str:
    """`text` (Markdown from the model) with nothing that loads, runs or hides on display."""
    text = without_controls(text)
    out: list[str] = []
    for part, is_code in _split_fenced(text):
        out.append(part if is_code else _outside_code_spans(part))
    return "".join(out)


def _split_fenced(text: str) -> list[tuple[str, bool]]:
    """(piece, is a fenced code block); an unclosed fence runs to the end, as Markdown has it."""
    pieces: list[tuple[str, bool]] = []
    position = 0
    while True:
        opening = _FENCE.search(text, position)
        if opening is None:
            pieces.append((text[position:], False))
            return pieces
        pieces.append((text[position : opening.start()], False))
        fence = opening.group(1)
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", re.MULTILINE)
        line_end = text.find("\n", opening.end())
        end_match = closing.search(text, line_end + 1) if line_end != -1 else None
        end = end_match.end() if end_match else len(text)
        pieces.append((text[opening.start() : end], True))
        position = end
        if end == len(text):
            return pieces


def _outside_code_spans(text: str) -> str:
    out: list[str] = []
    position = 0
    for span in _CODE_SPAN.finditer(text):
        out.append(_defuse(text[position : span.start()]))
        out.append(span.group(0))
        position = span.end()
    out.append(_defuse(text[position:]))
    return "".join(out)


def _defuse(text: str) -> str:
    text = _IMAGE.sub(lambda m: f"[image: {m.group(1) or 'untitled'}]{m.group(2)}", text)
    return _HTML.sub(r"\\<", text)
