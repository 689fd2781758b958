"""The main content of an HTML page as text: what the page says, without the navigation around it.

Why: read whole, every page of a Sphinx manual begins and ends with its site chrome ("Table of
Contents / Previous topic / Report a Bug / Show Source / Navigation", the footer); those chunks were
the top hit for 13% of the FAQ questions and filled the source excerpts (issue 16, item 2).

How, in order (`main_text`):

1. The page's own mark. An element with role="main", or a <main> element (Sphinx, MkDocs, Javadoc,
   rustdoc, Docusaurus, most current sites), is the author's statement of what the content is. It
   is taken whole, less the navigation inside it (<nav>, role=navigation/search, <footer>): no
   heuristic can drop a paragraph of it (trafilatura keeps 0.90 of Sphinx text: it drops lists of
   links such as the FAQ's "Wing IDE / Komodo IDE / PyCharm", and chapters' tables of contents).
2. Otherwise trafilatura judges which blocks of the page are content. It is used as a judge, not as
   the writer: its output decides which blocks are kept, and the text is written here from the page
   itself, so code keeps its lines and indentation (trafilatura joins a code block nested in a list
   into one line), table rows stay rows, and every heading whose section kept any text stays, as a
   line right above its first paragraph (trafilatura drops all headings on pages where it finds no
   article container, e.g. every SQLite page). Ids that merely repeat their section's heading are
   hidden from it first: its boilerplate rules drop any section whose id contains "share", "nav",
   "menu", "related" or "footer", which removed two whole answers ("How do I share global variables
   across modules?", "Why are default values shared between objects?") from the Python FAQ.
3. Neither yields text (a page that is all navigation, an empty shell, a fragment too small for
   trafilatura), trafilatura keeps under 5% of the page (an index, a site map: a page of links),
   or the markup is too large or nests deeper than libxml2 parses (256): `None`, and the caller
   reads the whole page as before (`extract._all_text`, which has no depth limit).

Choice, measured on real pages from Debian 12's python3.11-doc (Sphinx: the 9 FAQ pages, os and
40 random library pages), sqlite3-doc (40 random pages, no main landmark) and git-doc (asciidoc, 30
random pages), on this machine. Text kept: share of the main region's paragraphs, items, cells and
code blocks found in the output; headings: share of its headings found as a line; navigation: share
of the text outside the main region found as a line (git pages have almost none); ms: median per
page. Each cell is Sphinx / SQLite / git.

    =========================  ==================  ==================  ==================  =========
    extractor                  text kept           headings            navigation left     ms
    =========================  ==================  ==================  ==================  =========
    html.parser (before)       1.00 / 1.00 / 1.00  1.00 / 0.94 / 1.00  0.56 / 0.78 / 0     4 / 1 / 1
    trafilatura 2.3.1          0.90 / 0.92 / 0.97  0.94 / 0.14 / 0.85  0.02 / 0.11 / 0     20 / 9 / 6
    trafilatura, favor_recall  0.90 / 0.99 / 0.97  0.94 / 0.14 / 0.85  0.02 / 0.06 / 0     14 / 7 / 5
    readability-lxml 0.9       0.68 / 0.85 / 0.60  0.71 / 0.80 / 0.10  0.01 / 0.02 / 0     11 / 7 / 5
    jusText 3.0.2              0.32 / 0.72 / 0.69  0.00 / 0.79 / 0.62  0.02 / 0.00 / 0     9 / 8 / 5
    this module                1.00 / 1.00 / 1.00  1.00 / 0.95 / 0.99  0.00 / 0.08 / 0     2 / 11 / 9
    =========================  ==================  ==================  ==================  =========

(This module's SQLite navigation is four index pages, read whole by the MIN_JUDGED_SHARE rule; its
losses are captions of SVG syntax diagrams. Python FAQ chunks of 384 words: 90, 22 of them holding
Sphinx chrome, before; 75, none, after.) readability-lxml drops headings that are links (every
Sphinx FAQ question) and whole sections, and needs chardet (LGPL-2.1); jusText keeps no Sphinx
heading and drops most Sphinx text. trafilatura (Apache-2.0 since 1.8; its dependencies Apache, BSD,
MIT, MPL-2.0, and tld's MPL-1.1/GPL/LGPL at our choice) finds the content and removes the navigation
best; its losses above are what step 2 repairs. Its cost: about 50 MB installed and packaged (babel's
locale data is 35 MB of it, pulled in by courlan), 90 ms to import once per extraction child, and
data files read at run time (its settings.cfg, jusText's stoplists, its version from its metadata),
which dolphin-desk.spec collects. Hostile pages (a million nested <div>s, 50,000 unclosed tags,
500,000 attributes, a megabyte of script) end as before: libxml2 stops at depth 256 and says so,
which sends the page to the whole-page reader.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("dolphin.extract.html")

MAX_MARKUP_CHARS = 5_000_000  # parsed and judged: ~60 MB and under 1 s a megabyte; larger pages read whole
MIN_JUDGED_SHARE = 0.05  # trafilatura keeping less of a page than this means the page is links
SEARCH_BUDGET = 50  # see _Found
SHORT_BLOCK_CHARS = 30  # below this, a block's text can occur in the content by chance ("Home")
HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
# Elements whose end ends a paragraph of text. Anything else (a, b, code, span, ...) is inline.
BLOCKS = {
    *HEADINGS,
    *("p", "div", "section", "article", "main", "aside", "header", "footer", "nav", "blockquote", "pre"),
    *("ul", "ol", "li", "dl", "dt", "dd", "table", "thead", "tbody", "tfoot", "tr", "td", "th", "caption"),
    *("figure", "figcaption", "details", "summary", "form", "fieldset", "legend", "address", "hr", "center"),
    *("body", "html", "menu", "dir", "textarea", "iframe", "object", "video", "audio"),
}
CELLS = ("td", "th")
NOT_TEXT = ("script", "style", "noscript", "template", "svg", "canvas", "head", "button", "input", "select")
NAVIGATION_IN_MAIN = (
    ".//nav | .//footer | .//*[@hidden] | .//*[@role='navigation' or @role='search' or @role='contentinfo']"
)
_BREAK = "\x00"  # a <br> in a block's text (the parser turns a NUL in the markup into U+FFFD)
_SPACE = re.compile(r"\s+")
_PERMALINK = re.compile(r"\s*¶$")  # Sphinx's and MkDocs' heading and signature anchors
_ALNUM = re.compile(r"[\W_]+")


@dataclass
class _Block:
    """One paragraph-like piece of the page: a heading, a code block, a table row or text."""

    kind: str  # "heading", "term" (a <dt>), "pre", "text"
    text: str  # as written to the output
    key: str  # the text without any whitespace, to compare with trafilatura's
    level: int = 0  # 1-6 for headings
    kept: bool = False


def main_text(markup: str) -> str | None:
    """The page's main content with its headings, or None when the whole page should be read."""
    if len(markup) > MAX_MARKUP_CHARS:
        return None
    import lxml.etree
    import lxml.html

    parser = lxml.html.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True)
    try:
        tree = lxml.html.document_fromstring(markup.encode("utf-8", "replace"), parser=parser)
    except (lxml.etree.ParserError, ValueError):
        return None  # no element at all
    if any(error.level == lxml.etree.ErrorLevels.FATAL for error in parser.error_log):
        return None  # libxml2 stopped (nesting deeper than 256): the tree lacks the rest of the page
    title = _squeeze(" ".join(tree.xpath("//head/title//text()")))
    landmarks = [e for e in tree.xpath("//*[@role='main'] | //main") if not _inside_main(e)]
    for element in tree.xpath("//script | //style | //noscript | //template | //svg | //canvas"):
        element.drop_tree()
    blocks: list[_Block] = []
    for landmark in landmarks:
        for element in landmark.xpath(NAVIGATION_IN_MAIN):
            element.drop_tree()
        blocks += _blocks(landmark)
    if any(b.key for b in blocks):
        for block in blocks:
            block.kept = bool(block.key)
    else:
        blocks = _judged_by_trafilatura(tree)
        kept_chars = sum(len(b.key) for b in blocks if b.kept)
        if kept_chars < MIN_JUDGED_SHARE * sum(len(b.key) for b in blocks):
            return None  # a page of links (an index, a site map): its links are what it says
    kept = [b for b in blocks if b.kept]
    if not kept:
        return None
    return _write(kept, title)


def _inside_main(element: Any) -> bool:
    """Whether an ancestor is itself a main landmark (the outer one is taken whole)."""
    return any(a.tag == "main" or a.get("role") == "main" for a in element.iterancestors())


def _squeeze(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def _key(text: str) -> str:
    return _SPACE.sub("", text)


def _blocks(root: Any) -> list[_Block]:
    """The element's text as blocks in document order; iterative, so depth costs no stack."""
    import lxml.etree

    blocks: list[_Block] = []
    inline: list[str] = []
    heading = 0

    def flush(kind: str = "text") -> None:
        """The inline text so far as one block (a heading's, when inside one)."""
        lines = [_PERMALINK.sub("", _squeeze(line)) for line in "".join(inline).split(_BREAK)]
        text = "\n".join(line for line in lines if line)
        inline.clear()
        if text:
            blocks.append(_Block("heading" if heading else kind, text, _key(text), heading))

    walk = lxml.etree.iterwalk(root, events=("start", "end"))
    for event, element in walk:
        tag = element.tag if isinstance(element.tag, str) else ""
        if event == "start":
            if tag in NOT_TEXT:
                walk.skip_subtree()
                continue
            if tag == "br":
                inline.append(_BREAK)
            elif tag == "pre":
                flush()
                code = "".join(element.itertext()).strip("\n").rstrip()
                if code.strip():
                    blocks.append(_Block("pre", code, _key(code)))
                walk.skip_subtree()
                continue
            elif tag == "tr" and not any(d.tag in BLOCKS and d.tag not in CELLS for d in element.iterdescendants()):
                flush()
                cells = [_squeeze(" ".join(c.itertext())) for c in element if c.tag in CELLS]
                row = " | ".join(c for c in cells if c)
                if row:
                    blocks.append(_Block("text", row, _key("".join(cells))))
                walk.skip_subtree()
                continue
            elif tag in BLOCKS:
                flush()
                heading = HEADINGS.get(tag, heading)
            inline.append(element.text or "")
        else:
            if tag in BLOCKS:
                flush("term" if tag == "dt" else "text")
            if tag in HEADINGS:
                heading = 0
            if element is not root:
                inline.append(element.tail or "")
    flush()
    return blocks


def _judged_by_trafilatura(tree: Any) -> list[_Block]:
    """The body's blocks, each kept when trafilatura's extraction holds its text."""
    body = tree.find("body")
    if body is None:
        return []
    judged = _trafilatura_xml(tree)
    blocks = _blocks(body)
    if judged is None:
        return blocks
    found = _Found(judged)
    for block in blocks:
        if block.kind != "heading":
            block.kept = block.key in found.pieces or (len(block.key) >= SHORT_BLOCK_CHARS and block.key in found)
    # A short block between two kept blocks (the title of an example, a caption, a label), or next
    # to kept text and found in it (a one-word table cell, "config.py:"), is kept with them.
    text = [b for b in blocks if b.kind != "heading"]
    was_kept = [False, *(b.kept for b in text), False]
    for i, block in enumerate(text):
        block.kept = block.kept or (was_kept[i] and was_kept[i + 2] and len(block.key) < 2 * SHORT_BLOCK_CHARS)
    for run in (text, text[::-1]):  # runs of them too: a list of short items trafilatura kept
        for before, block in itertools.pairwise(run):
            block.kept = block.kept or (before.kept and block.key in found)
    # A lone short line between the page's title and its first kept text is its subtitle or
    # summary (a manual page's "git-hook - Run git hooks"), not navigation.
    first = next((i for i, b in enumerate(blocks) if b.kept), None)
    title = next((i for i in range(first or 0, -1, -1) if blocks[i].kind == "heading" and blocks[i].level == 1), None)
    if first is not None and title is not None:
        between = [b for b in blocks[title + 1 : first] if b.kind != "heading"]
        if len(between) == 1 and len(between[0].key) < 2 * SHORT_BLOCK_CHARS:
            between[0].kept = True
    # A heading stays when its section (up to the next heading of its level or above) kept text;
    # read backwards, "kept text follows, before a heading of level n or above" is one flag a level.
    text_follows = dict.fromkeys(range(1, 7), False)
    for block in reversed(blocks):
        if block.kind != "heading":
            if block.kept:
                text_follows = dict.fromkeys(range(1, 7), True)
            continue
        block.kept = text_follows[block.level]
        text_follows.update(dict.fromkeys(range(block.level, 7), False))
    return blocks


class _Found:
    """What trafilatura kept, without whitespace: its elements' texts, and `key in found` for text
    inside one of them. That search costs up to the whole text, so it is done from where the last
    match ended (the output is in page order) and within a budget of SEARCH_BUDGET times the text,
    after which only whole elements count: a page of millions of blocks stays linear."""

    def __init__(self, judged: Any) -> None:
        self.pieces = {_key("".join(e.itertext())) for e in judged.iter() if isinstance(e.tag, str)}
        self.text = _key("".join(judged.itertext()))
        self.budget = SEARCH_BUDGET * len(self.text) + 1_000_000
        self.cursor = 0

    def __contains__(self, key: str) -> bool:
        if key in self.pieces:
            return True
        if self.budget <= 0:
            return False
        at = self.text.find(key, self.cursor)
        self.budget -= (at if at >= 0 else len(self.text)) - self.cursor
        if at < 0 and self.cursor:  # out of order: trafilatura appends some recovered text at the end
            at = self.text.find(key, 0, self.cursor + len(key))
            self.budget -= self.cursor if at < 0 else at
        if at < 0:
            return False
        self.cursor = at + len(key)
        return True


def _trafilatura_xml(tree: Any) -> Any:
    """trafilatura's extraction of the page as an XML tree, or None when it finds nothing. It gets
    the tree itself (it works on a copy): the ids it must not see are removed here, in place, as
    nothing else reads them."""
    import lxml.etree

    for section in tree.iter("div", "section", "article"):
        identifier = section.get("id")
        first = next((c for c in section if isinstance(c.tag, str)), None)
        if identifier and first is not None and first.tag in HEADINGS:
            named = _ALNUM.sub("", identifier.lower()).rstrip("0123456789")
            if named and named == _ALNUM.sub("", first.text_content().lower()).rstrip("0123456789"):
                del section.attrib["id"]
    try:
        xml = _trafilatura().extract(
            tree,
            output_format="xml",
            include_tables=True,
            include_comments=False,
            include_links=False,
            include_images=False,
            with_metadata=False,
            deduplicate=False,
            favor_recall=True,
        )
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - a heuristic (or its install) failing: read the page whole
        log.warning("trafilatura could not read the page (%s: %s); it is read whole", type(exc).__name__, exc)
        return None
    if not xml:
        return None
    try:
        return lxml.etree.fromstring(xml.encode("utf-8"), lxml.etree.XMLParser(resolve_entities=False, no_network=True))
    except lxml.etree.XMLSyntaxError:  # its output nests deeper than libxml2 reads (256)
        return None


@functools.cache
def _trafilatura() -> Any:
    """Imported on first use (90 ms); its log quieted: it reports ordinary outcomes ("discarding
    data", "empty HTML tree") as warnings and errors, which would fill the app's log."""
    import trafilatura

    logging.getLogger("trafilatura").setLevel(logging.CRITICAL)
    return trafilatura


def _write(blocks: list[_Block], title: str) -> str:
    """Blocks as paragraphs; a heading or a <dt> term is a line right above what follows it, so the
    chunker (which cuts at blank lines) never separates a heading from its first paragraph."""
    parts: list[str] = []
    first = blocks[0].key
    if title and _key(title) not in first and not (blocks[0].kind == "heading" and first in _key(title)):
        parts += [title, "\n"]
    for i, block in enumerate(blocks):
        parts.append(block.text)
        if i + 1 < len(blocks):
            parts.append("\n" if block.kind in ("heading", "term") else "\n\n")
    return "".join(parts)
