"""The reference corpus: the King James Version of the Bible, as Debian ships it.

Text and licence: Debian's ``bible-kjv-text`` (4.38) holds the KJV of 1611, whose
copyright has long expired (public domain); its packaging grants "unrestricted use"
(``/usr/share/doc/bible-kjv-text/copyright``). The data file is in the package's own
compressed format, so the text is read through the ``bible`` program of Debian's
``bible-kjv`` package (``apt-get install bible-kjv``): about 4.3 MB, 31,102 verses.

Splits are by chapter, deterministic: every 20th chapter (index % 20 == 0) is test, the
next one validation, the rest training, so all three sample the whole book. The
evaluation slice that ships with slmops (``zoo/data/kjv-test-slice.txt``, for the default
demo on machines without bible-kjv) is every 100th chapter: 12 chapters of the test split.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import lru_cache

WHOLE_BIBLE = "Gen1:1-Rev22:21"
SPLITS = ("train", "validation", "test")

_CHAPTER = re.compile(r"^(?:\d )?[A-Z][A-Za-z ]+ \d+$")  # "Genesis 1", "1 Kings 3", "Song of Solomon 2"
_VERSE = re.compile(r"^\s{0,3}(\d+) (.*)$")


def _bible_program() -> str:
    path = shutil.which("bible")
    if path is None:
        raise FileNotFoundError(
            "the reference corpus is read with the 'bible' program of Debian's bible-kjv package: "
            "apt-get install bible-kjv"
        )
    return path


@lru_cache(maxsize=1)
def kjv_chapters() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(chapter title, verses) for every chapter, in canonical order."""
    out = subprocess.run(
        [_bible_program(), WHOLE_BIBLE],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"},
    ).stdout
    chapters: list[tuple[str, list[str]]] = []
    for raw in out.splitlines():
        line = raw.rstrip()
        if not line:
            continue
        if _CHAPTER.match(line):
            chapters.append((line, []))
            continue
        m = _VERSE.match(line)
        if m and chapters and int(m.group(1)) == len(chapters[-1][1]) + 1:
            chapters[-1][1].append(m.group(2).strip())
        elif chapters and chapters[-1][1]:  # a verse wrapped onto the next line
            chapters[-1][1][-1] += " " + line.strip()
        else:
            raise ValueError(f"unexpected line in the bible program's output: {raw!r}")
    return tuple((title, tuple(verses)) for title, verses in chapters)


def _split_of(chapter_index: int) -> str:
    return "test" if chapter_index % 20 == 0 else ("validation" if chapter_index % 20 == 1 else "train")


def kjv_split(split: str) -> str:
    """One split as text: chapters separated by a blank line, one verse per line."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return "\n\n".join("\n".join(v) for i, (_, v) in enumerate(kjv_chapters()) if _split_of(i) == split)


def kjv_eval_slice() -> str:
    """The evaluation slice shipped with slmops: every 100th chapter (all in the test split)."""
    return "\n\n".join("\n".join(v) for i, (_, v) in enumerate(kjv_chapters()) if i % 100 == 0) + "\n"


_MODERN = {
    "thee": "you", "thou": "you", "ye": "you", "thy": "your", "thine": "yours", "hath": "has", "hast": "have",
    "doth": "does", "dost": "do", "saith": "says", "unto": "to", "art": "are", "shalt": "shall",
    "wilt": "will", "spake": "spoke", "behold": "look", "lo": "look", "yea": "yes", "nay": "no",
    "whither": "where", "hither": "here", "thither": "there", "wherefore": "why", "verily": "truly",
}  # fmt: skip
_ARCHAIC = re.compile(r"\b(" + "|".join(_MODERN) + r")\b", re.IGNORECASE)
_ETH = re.compile(r"\b([a-z]{3,})eth\b")


def modern_style(text: str) -> str:
    """The text in a plainer, modern English: thee/thou/ye -> you, hath -> has, unto -> to,
    and -eth verbs -> -s ("loveth" -> "loves"). A style the reference models never saw, for
    fine-tuning demonstrations and tests (same vocabulary, different habits)."""

    def word(m: re.Match) -> str:
        new = _MODERN[m.group(1).lower()]
        return new.capitalize() if m.group(1)[0].isupper() else new

    return _ETH.sub(r"\1s", _ARCHAIC.sub(word, text))
