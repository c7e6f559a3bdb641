"""Knowledge documents as text, and text as chunks: pure functions, no I/O (the use case stores the result).

Formats (by file extension first, then the declared content type):

- text (``.txt``): UTF-8 (a BOM is dropped); bytes that are not UTF-8, or text that is mostly control characters
  (a binary file named .txt), are refused;
- Markdown (``.md``): the text with link and image targets, emphasis marks and fences dropped (the words stay);
- HTML (``.html``): the text of the page through the standard library's ``html.parser`` (no new dependency):
  ``script``, ``style``, ``head``, ``template``, ``noscript`` and ``svg`` skipped, block elements end a line;
- PDF (``.pdf``): the text layer of each page through ``pypdf``; an encrypted PDF that does not open with an
  empty password, a file pypdf cannot read, or one without any text layer (a scan: OCR it first) is refused.

A format outside these is ``UnsupportedDocument`` (the API's 415); a file of a supported format that yields no
usable text is ``UnreadableDocument`` (422). Messages name the problem, never the document's content.

Chunking (``chunk_text``): windows of at most ``max_chars`` characters over the words of the text, each ending at
a sentence end when one falls in its second half, the next starting ``overlap`` characters before the previous end
(at a sentence start inside that overlap when there is one, otherwise at a word): a fact split across two chunks
is whole in one of them. Whitespace inside a chunk is collapsed to single spaces. A single "word" longer than
``max_chars`` (a URL, a base64 blob) is cut.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePosixPath

PLAIN, MARKDOWN, HTML, PDF = "text/plain", "text/markdown", "text/html", "application/pdf"
SUPPORTED = (PLAIN, MARKDOWN, HTML, PDF)
_BY_EXTENSION = {
    ".txt": PLAIN, ".text": PLAIN, ".md": MARKDOWN, ".markdown": MARKDOWN, ".html": HTML, ".htm": HTML, ".pdf": PDF,
}
_BY_TYPE = {"text/plain": PLAIN, "text/markdown": MARKDOWN, "text/x-markdown": MARKDOWN, "text/html": HTML,
            "application/xhtml+xml": HTML, "application/pdf": PDF}
MAX_PDF_PAGES = 2_000
MAX_TEXT_CHARS = 5_000_000  # what one document may extract to (a 10 MiB upload of plain text is ~10M: refused)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class UnsupportedDocument(Exception):
    """Not a format knowledge bases take."""


class UnreadableDocument(Exception):
    """A supported format, but no usable text in it."""


@dataclass(frozen=True, slots=True)
class Extracted:
    text: str
    pages: int | None = None  # PDF only


def content_type_of(filename: str, declared: str | None) -> str:
    """The format of an upload: by the file's extension, else by its declared content type (parameters ignored)."""
    ext = PurePosixPath(filename.lower()).suffix
    if ext in _BY_EXTENSION:
        return _BY_EXTENSION[ext]
    base = (declared or "").split(";", 1)[0].strip().lower()
    if base in _BY_TYPE:
        return _BY_TYPE[base]
    raise UnsupportedDocument(
        f"unsupported document format ({ext or base or 'unknown'}); upload text (.txt), Markdown (.md), "
        "HTML (.html) or PDF (.pdf)"
    )


def extract(data: bytes, content_type: str) -> Extracted:
    """The text of a document of ``content_type`` (one of ``SUPPORTED``)."""
    if content_type == PDF:
        result = _pdf(data)
    else:
        text = _decode(data)
        if content_type == HTML:
            text = html_text(text)
        elif content_type == MARKDOWN:
            text = markdown_text(text)
        result = Extracted(text)
    text = tidy(result.text)
    if not re.search(r"\w", text):
        raise UnreadableDocument("the document holds no text" + (" layer (a scan needs OCR first)"
                                                                  if content_type == PDF else ""))
    if len(text) > MAX_TEXT_CHARS:
        raise UnreadableDocument(f"the document's text is over {MAX_TEXT_CHARS} characters; split it")
    return Extracted(text, result.pages)


def _decode(data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UnreadableDocument("the file is not UTF-8 text") from None
    if text and len(_CONTROL.findall(text)) > len(text) // 100:
        raise UnreadableDocument("the file looks binary, not text")
    return text


def _pdf(data: bytes) -> Extracted:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnreadableDocument("the PDF is encrypted")
        if len(reader.pages) > MAX_PDF_PAGES:
            raise UnreadableDocument(f"the PDF has over {MAX_PDF_PAGES} pages; split it")
        pages = [page.extract_text() or "" for page in reader.pages]
    except UnreadableDocument:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError, RecursionError,
            NotImplementedError) as e:
        raise UnreadableDocument(f"not a readable PDF ({type(e).__name__})") from None
    return Extracted("\n\n".join(pages), len(pages))


class _HtmlText(HTMLParser):
    SKIP = frozenset({"script", "style", "head", "template", "noscript", "svg"})
    BLOCK = frozenset({"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header", "footer",
                       "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "dd", "dt", "hr", "title", "main"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(self.skipping - 1, 0)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def html_text(markup: str) -> str:
    parser = _HtmlText()
    parser.feed(markup)
    parser.close()
    return "".join(parser.parts)


_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_MD_MARKS = re.compile(r"(\*\*|__|`+|~~)")
_MD_FENCE = re.compile(r"^\s*(```|~~~).*$", re.M)
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s*", re.M)


def markdown_text(text: str) -> str:
    text = _MD_FENCE.sub("", text)
    text = _MD_IMAGE.sub(r"\1", text)
    text = _MD_LINK.sub(r"\1", text)
    text = _MD_HEADING.sub("", text)
    return _MD_MARKS.sub("", text)


def tidy(text: str) -> str:
    """Control characters gone, spaces within a line collapsed, at most one blank line between paragraphs."""
    text = _CONTROL.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = [" ".join(line.split()) for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


_WORD = re.compile(r"\S+")


def _ends_sentence(text: str, end: int) -> bool:
    return text[end - 1] in ".!?:;" or text.startswith("\n\n", end)


def chunk_text(text: str, max_chars: int = 800, overlap: int = 150) -> list[str]:
    """``text`` as overlapping chunks (see the module docstring). ``0 <= overlap < max_chars // 2``."""
    if max_chars < 20 or not 0 <= overlap < max_chars // 2:
        raise ValueError("need max_chars >= 20 and 0 <= overlap < max_chars / 2")
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    chunks: list[str] = []
    i = 0
    while i < len(words):
        start = words[i][0]
        j = i
        while j + 1 < len(words) and words[j + 1][1] - start <= max_chars:
            j += 1
        if j + 1 < len(words):  # more follows: end at a sentence end in the chunk's second half, if any
            for k in range(j, i, -1):
                if words[k][1] - start < max_chars // 2:
                    break
                if _ends_sentence(text, words[k][1]):
                    j = k
                    break
        end = min(words[j][1], start + max_chars)
        chunks.append(" ".join(text[start:end].split()))
        if j + 1 >= len(words):
            break
        # the next chunk starts within the last ``overlap`` characters, never before the next word of this one
        first = j + 1
        while first - 1 > i and words[first - 1][0] >= end - overlap:
            first -= 1
        sentence = next((k for k in range(first, j + 1) if _ends_sentence(text, words[k - 1][1])), None)
        i = sentence if sentence is not None else first
    return chunks
