"""The reference corpus and tokenizer."""

import gzip
import re
import shutil
import unicodedata

import pytest
from slmops.zoo import SPECIAL_TOKENS, eval_text, kjv_chapters, kjv_split, modern_eval_text, train_tokenizer
from slmops.zoo.jargon import JARGON_FILE, MODERN_EVAL_CHARS, jargon_sections

needs_bible = pytest.mark.skipif(shutil.which("bible") is None, reason="Debian's bible-kjv is not installed")


@needs_bible
def test_the_whole_kjv_is_read():
    chapters = kjv_chapters()
    # The KJV has 1,189 chapters and 31,102 verses: a parser that drops or merges any fails.
    assert len(chapters) == 1189
    assert sum(len(v) for _, v in chapters) == 31102
    assert chapters[0] == ("Genesis 1", chapters[0][1]) and chapters[0][1][0].startswith(
        "In the beginning God"
    )
    assert chapters[-1][1][-1] == "The grace of our Lord Jesus Christ be with you all. Amen."


@needs_bible
def test_splits_are_deterministic_disjoint_and_cover_everything():
    texts = {s: kjv_split(s) for s in ("train", "validation", "test")}
    assert texts["train"] == kjv_split("train")
    chapters = {s: t.split("\n\n") for s, t in texts.items()}
    assert [len(chapters[s]) for s in ("train", "validation", "test")] == [1189 - 60 - 60, 60, 60]
    everything = ["\n".join(v) for _, v in kjv_chapters()]
    assert sorted(c for cs in chapters.values() for c in cs) == sorted(everything)
    assert 3_500_000 < len(texts["train"]) < 4_000_000
    with pytest.raises(ValueError, match="split must be"):
        kjv_split("dev")


def test_tokenizer_is_lossless_and_has_a_chat_template():
    text = "In the beginning God created the heaven and the earth.\nAnd the earth was without form, and void."
    tok = train_tokenizer([text] * 20, vocab_size=300)
    assert len(tok) <= 300
    for s in (text, "unseen: ünïcödé & émoji 🙂\t tabs", ""):
        assert tok.decode(tok(s)["input_ids"]) == s  # byte-level: every string survives
    assert tok.convert_tokens_to_ids(SPECIAL_TOKENS) == [0, 1, 2, 3]
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer([text], vocab_size=100)


# The second held-out text: prose of the Jargon File, from Debian's jargon-text package.
needs_jargon = pytest.mark.skipif(
    not JARGON_FILE.exists(), reason="Debian's jargon-text is not installed (apt-get install jargon-text)"
)


@needs_jargon
def test_modern_eval_text_is_deterministic_modern_english_prose():
    text = modern_eval_text()
    jargon_sections.cache_clear()  # a second read of the file, not the cached parse
    assert modern_eval_text() == text
    # About the KJV slice's size, capped; plain ASCII, mostly letters, one paragraph a line.
    assert 40_000 < len(text) <= MODERN_EVAL_CHARS
    assert text.isascii() and text.endswith(".\n")
    assert sum(c.isalpha() for c in text) / len(text) > 0.75
    lines = text.split("\n")
    assert len([p for p in lines if p]) > 100 and text.count("\n\n") >= 5
    # Not the KJV: no line in common with the KJV slice, and modern words where it has old ones.
    assert not set(lines) - {""} & set(eval_text().split("\n"))
    words = re.findall(r"[a-z]+", text.lower())
    assert words.count("hacker") + words.count("hackers") > 50
    assert words.count("you") > 20 and words.count("thou") == words.count("hath") == words.count("unto") == 0
    # No markup or headings left: the lexicon's braces, box drawing, table-of-contents lines.
    assert "{" not in text and "}" not in text and "Table of Contents" not in text


@needs_jargon
def test_modern_eval_text_comes_from_the_package_file():
    with gzip.open(JARGON_FILE, "rt", encoding="utf-8") as f:
        raw = f.read()
    # The first paragraph of Chapter 1, read directly, is the text's first line.
    start = re.search(r"^Chapter\s1\.\sHacker Slang and Hacker Culture\n\n", raw, re.MULTILINE).end()
    first = " ".join(raw[start : raw.index("\n\n", start)].split())
    text = modern_eval_text()
    assert text.split("\n")[0] == first
    assert text.split("\n")[0].startswith("This document is a collection of slang terms used by")
    # Every word of the text is a word of the file, and the folklore of Appendix A is in.
    folded = unicodedata.normalize("NFKD", raw).lower()
    assert set(re.findall(r"[a-z]+", text.lower())) <= set(re.findall(r"[a-z]+", folded))
    assert "Real Programmers write in FORTRAN." in text.split("\n")


def test_modern_eval_text_names_the_package_when_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install jargon-text"):
        modern_eval_text(tmp_path / "jargon.txt.gz")


def test_modern_eval_text_keeps_the_prose_of_the_chosen_parts(tmp_path):
    """The assembly on a small file laid out like the package's: chapters and appendices as
    column-0 headings, indented paragraphs, a table of contents, a table, cross-references."""
    nb = "\u00a0"
    fake = "\n".join([
        "                                The Jargon File", "", "   Table of Contents", "",
        f"Chapter{nb}1.{nb}Hacker Slang", "",
        "   This is {hack} prose, \u2018quoted\u2019 and \u201cdouble quoted\u201d \u2014 with a",
        "   dash and a wrapped line.", "", "   A heading-like line", "",
        f"Chapter{nb}3.{nb}Revision History", "", "   Left out: not a chosen part.", "",
        "\u2502Version\u2502 Date \u2502", "",
        f"Appendix{nb}A.{nb}Hacker Folklore", "", "   Table of Contents", "", "   The Story", "",
        "The Story", "", "   \u2022 A bullet that is a sentence.", "", "   a \u2192 4 e \u2192 3.", "",
        "   G\u00f6del said so!", "",
    ])  # fmt: skip
    path = tmp_path / "jargon.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(fake)
    assert modern_eval_text(path) == (
        "This is hack prose, 'quoted' and \"double quoted\" -- with a dash and a wrapped line.\n"
        "\n"
        "A bullet that is a sentence.\nGodel said so!\n"
    )
