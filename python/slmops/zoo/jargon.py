"""A second held-out evaluation text, in modern English: essays and stories of the Jargon File.

Text and licence: Debian's ``jargon-text`` (4.4.7-4.1, a 650 KB download with no
dependencies: ``apt-get install jargon-text``) holds the Jargon File 4.4.7 (29 Dec 2003),
edited by Eric S. Raymond, as ``/usr/share/doc/jargon-text/jargon.txt.gz`` (1.68 million
characters). Its copyright file (``/usr/share/doc/jargon-text/copyright``) quotes the File:
"This document (the Jargon File) is in the public domain, to be freely used, shared, and
modified."

The evaluation text is the File's prose about hacker culture, American English of 1975-2003
(the lexicon itself, definitions with pronunciation marks, is left out): the paragraphs of
Chapter 1 "Hacker Slang and Hacker Culture", Chapter 2 "Of Slang, Jargon, and Techspeak",
Appendix A "Hacker Folklore" (The Meaning of 'Hack', The Story of Mel, the AI koans, ...)
and Appendix B "A Portrait of J. Random Hacker", in the File's order, whole paragraphs until
the next would pass ``MODERN_EVAL_CHARS`` (about the size of the KJV slice, ``eval_text()``;
the text stops early in Appendix B: 44,671 characters, 7,438 words). Only paragraphs that
end as a sentence does are kept (not a heading, a table of contents, a table, a command log
or a letter-substitution list), and headings are dropped, as the KJV reader drops chapter
titles. Normalized to plain ASCII like the KJV text: one paragraph per line, a blank line
between sections, typographic quotes and dashes as ASCII ("--" for an em dash), the
lexicon's cross-reference braces ("{hack}") removed.
"""

from __future__ import annotations

import gzip
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

JARGON_FILE = Path("/usr/share/doc/jargon-text/jargon.txt.gz")
MODERN_EVAL_PARTS = ("Chapter 1", "Chapter 2", "Appendix A", "Appendix B")
MODERN_EVAL_CHARS = 45_000

_PART = re.compile(r"^(Chapter \d+|Appendix [A-Z])\. ")
_PROSE_END = re.compile(r"[.!?:][\"')\]]*$")  # after normalization: a sentence's end
_NOT_PROSE = re.compile(r"[\u2500-\u257f\u2192]")  # box drawing (tables), arrows (substitution lists)
_ASCII = str.maketrans({
    "\u00a0": " ", "\u2018": "'", "\u2019": "'", "\u00b4": "'", "\u201c": '"', "\u201d": '"',
    "\u2014": "--", "\u2013": "-", "\u2026": "...", "\u00d7": "x", "\u00b7": ".", "{": "", "}": "",
})  # fmt: skip


def _jargon_file_text(path: Path) -> str:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the modern-English evaluation text is read from the Jargon File of Debian's "
            f"jargon-text package, {path} not found: apt-get install jargon-text (on an image "
            "whose dpkg excludes /usr/share/doc, as slim Docker images do, remove that exclusion "
            "first)"
        ) from None


def _normalize(paragraph: str) -> str:
    text = " ".join(paragraph.translate(_ASCII).split())
    text = re.sub(r"^\u2022 ", "", text)  # a bullet
    # Letters with accents (rare: Goedel's o) as their base letter; anything else non-ASCII goes.
    text = unicodedata.normalize("NFKD", text)
    return "".join(c for c in text if c.isascii())


@lru_cache(maxsize=4)
def jargon_sections(path: Path | str = JARGON_FILE) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """(part, heading, paragraphs) for every section of the Jargon File, in order. A heading
    is a line at column 0; its part is the chapter or appendix it falls in ("Chapter 1",
    "Appendix B"; "" before the first); paragraphs are the blank-line separated blocks under
    it, each on one line, as the file has them (not normalized)."""
    text = _jargon_file_text(Path(path)).replace("\u00a0", " ")
    sections: list[tuple[str, str, list[str]]] = []
    part = ""
    block: list[str] = []

    def end_block() -> None:
        if block and sections:
            sections[-1][2].append(" ".join(" ".join(block).split()))
        block.clear()

    for line in text.splitlines():
        if line and not line[0].isspace() and not _NOT_PROSE.match(line):
            end_block()
            m = _PART.match(line)
            part = m.group(1) if m else part
            sections.append((part, line.strip(), []))
        elif line.strip():
            block.append(line)
        else:
            end_block()
    end_block()
    return tuple((p, h, tuple(ps)) for p, h, ps in sections)


def modern_eval_text(path: Path | str = JARGON_FILE) -> str:
    """The second held-out evaluation text, in modern English (at most ``MODERN_EVAL_CHARS``
    characters): prose of the Jargon File (public domain) read from Debian's jargon-text
    package. The module's docstring says what is taken and how it is normalized."""
    sections: list[list[str]] = []
    size = 1  # the final newline
    for part, _, paragraphs in jargon_sections(path):
        if part not in MODERN_EVAL_PARTS:
            continue
        sections.append([])
        for paragraph in paragraphs:
            line = _normalize(paragraph)
            if _NOT_PROSE.search(paragraph) or not _PROSE_END.search(line):
                continue
            size += len(line) + (1 if size > 1 else 0) + (1 if size > 1 and not sections[-1] else 0)
            if size > MODERN_EVAL_CHARS:
                break
            sections[-1].append(line)
        else:
            continue
        break
    return "\n\n".join("\n".join(s) for s in sections if s) + "\n"
