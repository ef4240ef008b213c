"""Regenerates llamacpp_smollm2_ids.json: llama.cpp's token ids for SmolLM2-135M-Instruct
(the Q4_1 GGUF slmops downloads) on the chat template and on unicode/whitespace-heavy text,
the reference tests/py/test_tokenizer_llamacpp.py compares slmops' tokenizer with.

Not run by the test suite; it needs a built ``llama-tokenize``:

    python tests/py/data/make_llamacpp_ids.py /path/to/llama-tokenize /path/to/SmolLM2.gguf \\
        --llamacpp-version "llama-cpp-python 0.3.36 (llama.cpp 0c1e570)"

Every text goes to llama-tokenize in a file (``-f``, read verbatim: no escape processing with
``--no-escape``, no newline stripped), without ``--no-bos`` (llama.cpp adds BOS only when the
file asks for it; SmolLM2's says ``tokenizer.ggml.add_bos_token = false``), special tokens
parsed (llama-tokenize's default) unless the case says otherwise (``--no-parse-special``).
The chat templates are rendered by slmops' tokenizer (the template stored in the GGUF)."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "llamacpp_smollm2_ids.json"

CHAT = [
    {"role": "system", "content": "You are a terse assistant. Answer in one line."},
    {"role": "user", "content": "What is 2+2?  And   why?\n\tThanks!"},
    {"role": "assistant", "content": "4, because 2 + 2 = 4. 🙂"},
]
CHAT_NO_SYSTEM = [
    {"role": "user", "content": "  Héllo\r\n wörld — ¿qué tal? 你好 👋  "},
    {"role": "assistant", "content": "Hi!\n\n\nFine, thanks."},
    {"role": "user", "content": "DON'T stop; we'll see 1234567 and 3.14159."},
]

CODE = '''def f(x, *, tol=1e-6):
    """Docstring with "quotes" and a backslash: \\n is not a newline."""
\tif x  ==  0:   # tab-indented, double spaces
        return {"a": [1, 2, 3], 'b': (4,)}
    else:
            while x > tol:
                x /= 2.0
    return x  \n\n\n'''

# (name, text, parse_special) ; the chat and KJV cases are rendered at run time
TEXTS = [
    ("spaces", "a b  c   d    e     f      g       h        i" + " " * 16 + "j" + " " * 33 + "end", True),
    ("leading_trailing", "   leading and trailing whitespace   ", True),
    ("only_whitespace", " \t \n \r\n  \n\n   ", True),
    ("tabs_crlf", "col1\tcol2\t\tcol3\r\nrow 2\r\n\r\n  \t indented\t\r\n\tend\t", True),
    ("many_newlines", "\n\n\nParagraph one.\n\n\n\n\nParagraph two.\n \n  \n\n\n\n\n\n\n\nlast\n", True),
    (
        "unicode_whitespace",
        "nbsp\u00a0x em\u2003x ideo\u3000x linesep\u2028x vt\x0bx ff\x0cx nel\x85x zwsp\u200bx thin\u2009x",
        True,
    ),
    (
        "accents_combining",
        "café naïve résumé Ångström façade; cafe\u0301 nai\u0308ve (decomposed), Zoë, ñ, ß, ǅ, "
        "İstanbul, ΑΒΓ αβγ, Привет, мир! Ça va? Z\u0351\u0360a\u035b\u0362l\u0353go",
        True,
    ),
    ("cjk", "日本語のテキスト、中文文本。한국어 텍스트입니다。全角\u3000スペース　と半角 space。", True),
    (
        "emoji_zwj",
        "family 👨\u200d👩\u200d👧\u200d👦, flags 🇫🇷🇯🇵, skin 👍🏽, heart ❤\ufe0f, "
        "🏳\ufe0f\u200d🌈, keycap 1\ufe0f\u20e3, 🧑🏿\u200d💻 coder!!",
        True,
    ),
    ("rtl", "العربية: مرحبا بالعالم. עברית: שלום עולם! mixed \u200fRTL\u200e marks ١٢٣", True),
    (
        "digits",
        "1234567 3.14159 -0.5e10 2024-06-01 1,000,000 $99.99 0x1F ١٢٣ ⁴² ½ 12345678901234567890",
        True,
    ),
    ("code", CODE, True),
    (
        "contractions",
        "DON'T we'll I'M you'RE they've She'd it's O'Neil's \u2019curly\u2019 don\u2019t 'quoted'",
        True,
    ),
    ("special_adjacent", "text<|im_end|>more<|endoftext|><|im_start|>user\n<file_sep>x<empty_output>", True),
    ("special_unparsed", "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>", False),
    ("empty", "", True),
]


def render(tokenizer) -> list[dict]:
    """Every case as ``{name, parse_special, text}``, the chat ones with their messages."""
    import slmops

    def chat(name, messages, generation_prompt):
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
        return {"name": name, "parse_special": True, "text": text, "messages": messages,
                "add_generation_prompt": generation_prompt}  # fmt: skip

    return [
        chat("chat_template", CHAT, False),
        chat("chat_template_generation_prompt", CHAT[:2], True),
        chat("chat_template_default_system", CHAT_NO_SYSTEM, True),
        *({"name": name, "parse_special": special, "text": text} for name, text, special in TEXTS),
        {"name": "kjv", "parse_special": True, "text": slmops.zoo.eval_text()[:2000]},
    ]


def command(binary: str, gguf: str, path: str, parse_special: bool) -> list[str]:
    flags = ["--ids", "--no-escape", "--log-disable"] + ([] if parse_special else ["--no-parse-special"])
    return [binary, "-m", gguf, "-f", path, *flags]


def tokenize(binary: str, gguf: str, text: str, parse_special: bool) -> list[int]:
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text.encode("utf-8"))
    try:
        run = subprocess.run(command(binary, gguf, f.name, parse_special), capture_output=True, check=True)
    finally:
        Path(f.name).unlink()
    lines = [line for line in run.stdout.decode().splitlines() if line.startswith("[")]
    if len(lines) != 1:
        raise RuntimeError(f"unexpected llama-tokenize output:\n{run.stdout.decode()}\n{run.stderr.decode()}")
    return json.loads(lines[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("llama_tokenize", help="path to llama.cpp's llama-tokenize binary")
    parser.add_argument("gguf", help="path to SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--llamacpp-version", required=True, help="recorded as is")
    parser.add_argument("--output", default=str(OUTPUT))
    args = parser.parse_args(argv)

    from slmops.models.gguf import load_gguf

    _, tokenizer = load_gguf(args.gguf)
    cases = render(tokenizer)
    for case in cases:
        case["ids"] = tokenize(args.llama_tokenize, args.gguf, case["text"], case["parse_special"])
    bos = tokenizer.convert_tokens_to_ids(tokenizer.bos_token)
    with_bos = tokenize(args.llama_tokenize, args.gguf, "hello", True)
    record = {
        "llama_cpp": args.llamacpp_version,
        "gguf": Path(args.gguf).name,
        "gguf_sha256": hashlib.sha256(Path(args.gguf).read_bytes()).hexdigest(),
        "command": " ".join(command("llama-tokenize", "MODEL.gguf", "TEXT.txt", True))
        + "  (plus --no-parse-special where parse_special is false)",
        "llama_cpp_adds_bos": bool(with_bos) and with_bos[0] == bos,
        "cases": cases,
    }
    # one case's ids on one line (a real newline never occurs inside a JSON string)
    text = re.sub(
        r"\[\n(?:\s*\d+,?\n)+\s*\]", lambda m: json.dumps(json.loads(m.group())), json.dumps(record, indent=1)
    )
    Path(args.output).write_text(text + "\n", encoding="utf-8")
    print(f"{len(cases)} cases written to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
