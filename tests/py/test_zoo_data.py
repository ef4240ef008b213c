"""The reference corpus and tokenizer."""

import shutil

import pytest
from slmops.zoo import SPECIAL_TOKENS, kjv_chapters, kjv_split, train_tokenizer

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
