"""Sentence splitting, cleaning and filtering of raw article text (WikiExtractor-style dumps)."""

from __future__ import annotations

import html
import re

# Words after which a period does not end a sentence.
ABBREVIATIONS = frozenset(
    """mr mrs ms dr prof st jr sr sen rep gov gen col lt sgt capt cmdr adm maj mt ft inc ltd co corp
    bros vs etc e.g i.e cf al approx dept est fig no nos vol vols pp ed eds rev hon jan feb mar apr jun jul
    aug sep sept oct nov dec u.s u.k u.n a.d b.c ca op c""".split()
)

_BOUNDARY = re.compile(r"[.!?]+[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9])")
_TAG = re.compile(r"<[^<>]{0,200}>")
_CITATION = re.compile(r"\[\d{1,3}\]")
_EMPTY_PARENS = re.compile(r"\(\s*[^\w\s]*\s*\)")  # "()", "(; )", "(, ;)": template remnants
_PAREN_LEAD = re.compile(r"\(\s*[;,:]+\s*")  # "(; born 1989)" -> "(born 1989)"
_PAREN_TRAIL = re.compile(r"\s*[;,:]+\s*\)")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_WS = re.compile(r"\s+")


def split_sentences(paragraph: str) -> list[str]:
    """Split one paragraph at . ! ? followed by a capital or digit, except after abbreviations
    and initials ("J. R. R. Tolkien", "U.S. Army")."""
    out, start = [], 0
    for m in _BOUNDARY.finditer(paragraph):
        head = paragraph[start : m.start() + 1]
        last_word = head.rsplit(None, 1)[-1].rstrip(".!?").lstrip("(\"'").lower() if head.strip() else ""
        if paragraph[m.start()] == "." and (last_word in ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha())):
            continue
        out.append(paragraph[start : m.end()].strip())
        start = m.end()
    tail = paragraph[start:].strip()
    if tail:
        out.append(tail)
    return out


def clean_text(text: str) -> str:
    """Undo HTML escapes, drop tags, citation marks and empty template parentheses; tidy spaces."""
    text = html.unescape(text)
    text = _TAG.sub(" ", text)
    text = _CITATION.sub("", text)
    text = _EMPTY_PARENS.sub("", text)
    text = _PAREN_LEAD.sub("(", text)
    text = _PAREN_TRAIL.sub(")", text)
    text = _WS.sub(" ", text).strip()
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # exactly Unicode category Cc


def has_control_chars(text: str, allowed: str = "") -> bool:
    """True when ``text`` holds a control character (NUL, ESC, ...) other than ``allowed``."""
    return any(m.group() not in allowed for m in _CONTROL.finditer(text))


def article_lines(text: str) -> list[str]:
    """The cleaned, non-empty lines of an article (section titles kept): a document for a causal LM."""
    return [line for line in (clean_text(x) for x in text.split("\n")) if line]


def article_sentences(text: str, min_title_words: int = 5) -> tuple[list[str], int]:
    """All cleaned sentences of an article; lines shorter than ``min_title_words`` words (section titles,
    list remnants) are dropped. Returns (sentences, number of dropped title lines)."""
    sentences, titles = [], 0
    for line in text.split("\n"):
        line = clean_text(line)
        if not line:
            continue
        if len(line.split()) < min_title_words:
            titles += 1
            continue
        sentences.extend(split_sentences(line))
    return sentences, titles
