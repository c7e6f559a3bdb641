"""Knowledge documents as text and text as chunks (pure functions of control-api's ``documents``)."""

from __future__ import annotations

import itertools
import re

import pytest
from voice_control_api.documents import (
    HTML,
    MARKDOWN,
    PDF,
    PLAIN,
    UnreadableDocument,
    UnsupportedDocument,
    chunk_text,
    content_type_of,
    extract,
)
from voice_control_api.usecases.knowledge import Upload, document_name, parse

from .pdfs import make_pdf

pytestmark = pytest.mark.unit

FACTS = [f"Fact number {i} says the soup of day {i} is tomato." for i in range(80)]
TEXT = " ".join(FACTS)


# ------------------------------------------------------------------ chunking
def test_chunks_are_bounded_and_cover_every_word_in_order() -> None:
    chunks = chunk_text(TEXT, max_chars=300, overlap=80)
    assert len(chunks) > 10
    assert all(len(c) <= 300 for c in chunks)
    seen = " ".join(chunks)
    for fact in FACTS:  # every sentence is whole in some chunk
        assert any(fact in c for c in chunks), fact
    assert seen.index("Fact number 0 ") < seen.index("Fact number 79 ")


def test_consecutive_chunks_overlap_and_start_at_a_sentence() -> None:
    chunks = chunk_text(TEXT, max_chars=300, overlap=80)
    for before, after in itertools.pairwise(chunks):
        first_sentence = after.split(". ")[0] + "."
        assert first_sentence in before, (before, after)  # the next chunk repeats the end of the one before
        assert after.startswith("Fact number")  # ... from a sentence start inside the overlap
        assert before.endswith(".")  # a chunk ends at a sentence end when one is in its second half


def test_no_overlap_means_no_repeated_sentence() -> None:
    chunks = chunk_text(TEXT, max_chars=300, overlap=0)
    joined = " ".join(chunks)
    assert all(joined.count(f + " ") + joined.endswith(f) == 1 for f in FACTS)


def test_short_text_is_one_chunk_and_whitespace_collapses() -> None:
    assert chunk_text("  Hello\n\n  world  ", 100, 10) == ["Hello world"]
    assert chunk_text("", 100, 10) == []


def test_a_word_longer_than_a_chunk_is_cut_and_chunking_ends() -> None:
    chunks = chunk_text("a " + "x" * 1000 + " tail words here", 200, 50)
    assert all(len(c) <= 200 for c in chunks)
    assert chunks[-1].endswith("tail words here")


def test_text_without_sentence_ends_still_overlaps_at_words() -> None:
    words = " ".join(f"w{i}" for i in range(400))
    chunks = chunk_text(words, 200, 50)
    for before, after in itertools.pairwise(chunks):
        assert after.split()[0] in before.split()


@pytest.mark.parametrize("max_chars, overlap", [(10, 0), (100, 50), (100, -1)])
def test_bad_chunk_settings_are_refused(max_chars: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        chunk_text(TEXT, max_chars, overlap)


# ------------------------------------------------------------------ formats
@pytest.mark.parametrize(
    "filename, declared, expected",
    [
        ("menu.PDF", None, PDF),
        ("notes.md", "application/octet-stream", MARKDOWN),
        ("page.htm", None, HTML),
        ("faq.txt", None, PLAIN),
        ("upload", "text/html; charset=utf-8", HTML),
        ("upload", "application/pdf", PDF),
    ],
)
def test_format_by_extension_then_declared_type(filename: str, declared: str | None, expected: str) -> None:
    assert content_type_of(filename, declared) == expected


@pytest.mark.parametrize("filename, declared", [("sheet.xlsx", None), ("photo.png", "image/png"), ("x", None)])
def test_other_formats_are_unsupported(filename: str, declared: str | None) -> None:
    with pytest.raises(UnsupportedDocument, match="unsupported document format"):
        content_type_of(filename, declared)


def test_html_keeps_the_words_and_drops_scripts_styles_and_the_head() -> None:
    page = (
        "<html><head><title>Secret title</title><style>p{color:red}</style></head><body><h1>Opening hours</h1>"
        "<p>Mon&ndash;Fri 8&nbsp;am to 10 pm</p><script>track()</script><ul><li>Soup</li><li>Bread</li></ul>"
        "</body></html>"
    )
    text = extract(page.encode(), HTML).text
    lines = [line for line in text.splitlines() if line]
    assert lines == ["Opening hours", "Mon\u2013Fri 8 am to 10 pm", "Soup", "Bread"]
    assert "track" not in text and "color" not in text and "Secret" not in text


def test_markdown_keeps_link_text_and_drops_targets_and_marks() -> None:
    md = "# Parking\n\nPark **behind** the [restaurant](https://example.com/map). ![map](map.png)\n"
    text = extract(md.encode(), MARKDOWN).text
    assert text == "Parking\n\nPark behind the restaurant. map"


def test_text_must_be_utf8_and_not_binary() -> None:
    assert extract("\ufeffCafé au lait".encode(), PLAIN).text == "Café au lait"
    with pytest.raises(UnreadableDocument, match="not UTF-8"):
        extract(b"\xff\xfe\x00broken", PLAIN)
    with pytest.raises(UnreadableDocument, match="binary"):
        extract(bytes(range(0, 32)) * 20, PLAIN)
    with pytest.raises(UnreadableDocument, match="no text"):
        extract(b"  \n \n ", PLAIN)


def test_pdf_text_layer_with_pages() -> None:
    pdf = make_pdf([["Parking is free behind the restaurant."], ["Soup (tomato) costs 4 dollars."]])
    got = extract(pdf, PDF)
    assert got.pages == 2
    assert "Parking is free behind the restaurant." in got.text
    assert "Soup (tomato) costs 4 dollars." in got.text


@pytest.mark.parametrize(
    "data, message",
    [
        (b"not a pdf at all", "not a readable PDF"),
        (b"%PDF-1.4\n1 0 obj\n<< garbage", "not a readable PDF"),
        (make_pdf([[]]), "no text layer"),
    ],
)
def test_garbled_or_textless_pdfs_are_unreadable(data: bytes, message: str) -> None:
    with pytest.raises(UnreadableDocument, match=re.escape(message)):
        extract(data, PDF)


def test_parse_chunks_an_upload_and_bounds_the_chunk_count() -> None:
    parsed = parse(Upload("facts.txt", None, TEXT.encode()), chunk_chars=300, overlap=80, max_chunks=100)
    assert parsed.content_type == PLAIN and parsed.text_chars == len(TEXT) and len(parsed.chunks) > 10
    with pytest.raises(UnreadableDocument, match="over 3 chunks"):
        parse(Upload("facts.txt", None, TEXT.encode()), chunk_chars=300, overlap=80, max_chunks=3)
    # an overlap over half a chunk is clamped, not an error
    assert parse(Upload("facts.txt", None, TEXT.encode()), chunk_chars=200, overlap=150, max_chunks=1000).chunks


@pytest.mark.parametrize(
    "filename, expected",
    [("menu.pdf", "menu.pdf"), ("C:\\Users\\me\\menu.pdf", "menu.pdf"), ("../../etc/x.txt", "x.txt"),
     ("", "document"), ("a\x00b.txt", "document"), ("n" * 300 + ".md", "n" * 200)],
)
def test_document_names_are_base_names_within_bounds(filename: str, expected: str) -> None:
    assert document_name(filename) == expected
