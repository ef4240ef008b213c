"""GGUF files in: a llama.cpp model file as a float transformers model with its tokenizer and
chat template. A GGUF that slmops exported loads back to the logits of the model it came from
(float: exactly).

Two readers (``load_gguf(..., reader=)``), ``DEFAULT_READER`` the one used when none is named:

- ``"slmops"`` (the default): ours. It parses the file once (metadata, tensor table) from a
  memory map, builds the config from the metadata, dequantizes each tensor once (slmops'
  kernels for q4_0, q8_0, q4_k and q6_k, numpy for q4_1 and the float types, the gguf
  package for every other ggml type), reverses llama.cpp's q/k row permutation, and builds
  the tokenizer with transformers' GGUF tokenizer converters from the metadata already read.
  It covers the architectures ``llama`` (Llama, and Mistral files written as llama) and
  ``qwen2``, and only files whose every tensor has a place in the model; anything else it
  hands to transformers' loader (logged), so every file that loaded before still loads.
  Its models and tokenizers equal transformers' bit for bit (tests/py/test_gguf_in.py), in
  a fraction of the time and memory (docs/models.md).
- ``"transformers"``: ``from_pretrained(folder, gguf_file=...)`` for the model and the
  tokenizer; every architecture transformers' GGUF loader knows (phi3, gemma, qwen3, ...).

Both readers then give the tokenizer of a byte-level GGUF whose ``tokenizer.ggml.pre`` names
one of llama.cpp's digit-splitting pre-tokenizers (smollm, starcoder, command-r, ...) the
digit split that llama.cpp and the model's own tokenizer.json apply and transformers' converter
leaves out (``_DIGITS_APART``): SmolLM2's token ids equal llama.cpp's
(tests/py/test_tokenizer_llamacpp.py).

The workflow engine works on model folders: it converts a GGUF input once into a folder in
its cache (``gguf_folder``), keyed by the file's content."""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"
READERS = ("slmops", "transformers")
DEFAULT_READER = "slmops"

_log = logging.getLogger(__name__)


def is_gguf_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a GGUF file (by its suffix; the magic is checked on load)."""
    p = Path(path)
    return p.suffix.lower() == ".gguf" and p.is_file()


def load_gguf(
    path: str | os.PathLike[str], dtype: Any = None, reader: str = DEFAULT_READER
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the GGUF file ``path``, the model dequantized to ``dtype``
    (float32 by default), in eval mode. ``reader``: ``"slmops"`` (ours; files it does not
    cover go to transformers' loader) or ``"transformers"``. A file that is not GGUF, is cut
    short, or whose architecture or tokenizer neither reader knows is a ValueError naming
    the file."""
    import torch

    if reader not in READERS:
        raise ValueError(f"unknown GGUF reader {reader!r}; expected one of {', '.join(map(repr, READERS))}")
    p = Path(path)
    with open(p, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ValueError(f"{p} is not a GGUF file (it does not start with the GGUF magic)")
    dtype = dtype or torch.float32
    loaded = _load_slmops(p, dtype) if reader == "slmops" else None
    model, tokenizer = loaded if loaded is not None else _load_transformers(p, dtype)
    return model.eval(), tokenizer


def gguf_folder(path: str | os.PathLike[str], cache: Path, key: str) -> Path:
    """A Hugging Face folder in ``cache`` holding the GGUF file ``path`` as float weights
    (``key``: the file's content hash), written once."""
    from .._io import atomic_dir

    folder = cache / f"gguf-{key}"
    if not (folder / "config.json").is_file():
        model, tokenizer = load_gguf(path)
        with atomic_dir(folder, overwrite=True) as tmp:  # the cache is slmops's alone
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return folder


# -- transformers' loader ------------------------------------------------------------------


def _load_transformers(p: Path, dtype: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
        model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=dtype)
        gguf = _File(p)
        _split_like_llamacpp(tokenizer, gguf.metadata)
        del gguf.map
    except OSError:
        raise
    except Exception as e:  # the gguf package and transformers raise many kinds on bad files
        raise ValueError(
            f"{p} does not load as a transformers model ({type(e).__name__}: {_shown(e, 300)}); "
            "slmops reads the GGUF architectures of transformers' GGUF loader (llama, mistral, qwen2, ...)"
        ) from e
    # The weights are float now; transformers still tags the model as GGUF-quantized, which
    # would stop save_pretrained and make peft and our passes treat it as quantized.
    model.hf_quantizer, model.is_quantized, model.quantization_method = None, False, None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


# -- our reader: the file ---------------------------------------------------------------------

# ggml types by id: (name, elements per block, bytes per block); the float types are blocks of one
_GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
}  # fmt: skip
# metadata value types with a fixed width: id -> struct format
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# the fewest bytes an array item of a type takes (a string: its length; an array: its item
# type and length), so that a declared length is checked against the file before a list of
# that length is made
_LEAST_BYTES = {**{t: struct.calcsize(f) for t, f in _SCALARS.items()}, _STRING: 8, _ARRAY: 12}
# arrays of arrays nest at most this deep (real files: once at most; llama.cpp: never); each
# level is a frame of the parse, and a file of nested arrays would exhaust the stack
_MAX_NESTING = 8
_MAX_DIMS = 4  # ggml's GGML_MAX_DIMS, as llama.cpp checks


def _shown(text: Any, limit: int = 80) -> str:
    """``text`` fit for a one-line message: a name from a damaged file may hold newlines,
    control characters or a whole vocabulary; those are escaped and the length capped."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Tensor:
    __slots__ = ("name", "shape", "type", "offset", "nbytes")

    def __init__(self, name: str, shape: tuple[int, ...], type: int, offset: int, nbytes: int) -> None:
        self.name, self.shape, self.type, self.offset, self.nbytes = name, shape, type, offset, nbytes


class _File:
    """A GGUF file parsed once: ``metadata`` (key -> value; arrays as lists), ``tensors``
    (in file order, shapes in torch order) and the memory map their data lives in."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as f:  # mapped, not read: pages come in as tensors are dequantized
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._parse()
        except BaseException as e:
            self.map.close()  # nothing views it yet
            if isinstance(e, (struct.error, UnicodeDecodeError, OverflowError, MemoryError)):
                raise ValueError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e})") from e
            raise

    def _parse(self) -> None:
        m = self.map
        self.pos = 4
        version, n_tensors, n_kv = self._unpack("<IQQ", "the header")
        if version not in (2, 3):  # v1 counted in 32 bits; a big-endian file reads as a huge version
            raise ValueError(f"{self.path} is GGUF version {version}; slmops reads versions 2 and 3")
        # the least a pair (key length, type, value) and a tensor entry (name length, n_dims,
        # type, offset) take: a count the file cannot hold is refused before the loop
        for n, least, what in ((n_kv, 13, "metadata pairs"), (n_tensors, 24, "tensors")):
            if n * least > len(m):
                raise ValueError(f"{self.path} declares {n:,} {what}, more than its {len(m):,} bytes hold")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string()
            (value_type,) = self._unpack("<I", f"the type of {key}")
            if key in self.metadata:  # which one counts would be a guess (llama.cpp refuses too)
                raise ValueError(f"{self.path} has the metadata key {_shown(key)} twice")
            self.metadata[key] = self._value(value_type, key)
        align = self.metadata.get("general.alignment", 32)
        if not isinstance(align, int) or isinstance(align, bool) or align <= 0:
            raise ValueError(
                f"{self.path}: general.alignment is {_shown(repr(align))}, not a positive integer"
            )
        self.tensors: list[_Tensor] = []
        names: set[str] = set()
        for _ in range(n_tensors):
            name = self._string()
            (n_dims,) = self._unpack("<I", f"the dimension count of tensor {name}")
            if n_dims > _MAX_DIMS:
                raise ValueError(
                    f"{self.path}: tensor {_shown(name)} has {n_dims:,} dimensions; ggml has at most 4"
                )
            dims = self._unpack(f"<{n_dims}Q", f"the dimensions of tensor {name}")
            type_id, offset = self._unpack("<IQ", f"the type and offset of tensor {name}")
            if type_id not in _GGML_TYPES:
                raise ValueError(
                    f"{self.path}: tensor {_shown(name)} has ggml type {type_id}, which slmops does not know"
                )
            if name in names:  # the second would silently replace the first
                raise ValueError(f"{self.path} has the tensor {_shown(name)} twice")
            names.add(name)
            type_name, block, block_bytes = _GGML_TYPES[type_id]
            # ggml's rule: a row (the first, fastest-moving dimension) is whole blocks; else
            # the byte count below would not be the data's, nor a reshape into rows possible
            if (dims[0] if dims else 1) % block:
                raise ValueError(
                    f"{self.path}: tensor {_shown(name)} has rows of {dims[0] if dims else 1:,} values, "
                    f"not whole {type_name} blocks of {block}"
                )
            if offset % align:
                raise ValueError(
                    f"{self.path}: tensor {_shown(name)}'s offset {offset:,} is not {align}-aligned"
                )
            count = 1
            for d in dims:  # Python ints: a product of absurd dims is only a big number, checked below
                count *= d
            # ggml lists dimensions fastest-moving first, torch slowest first
            self.tensors.append(
                _Tensor(name, tuple(reversed(dims)), type_id, offset, count // block * block_bytes)
            )
        self.data_start = -(-self.pos // align) * align
        for t in self.tensors:
            end = self.data_start + t.offset + t.nbytes
            if end > len(m):
                raise ValueError(
                    f"{self.path} is cut short: tensor {_shown(t.name)} ends at byte {end:,} of {len(m):,}"
                )

    def release(self, t: _Tensor) -> None:
        """Drop the pages of ``t``'s data from this process (they were only read, so the
        kernel reads them again from the file if asked): the file does not add its size to
        the peak memory of a load on top of the float model."""
        page = mmap.PAGESIZE
        start = (self.data_start + t.offset) // page * page
        if hasattr(mmap, "MADV_DONTNEED") and t.nbytes:  # not on every platform; an empty
            # tensor at the very end would start past the map, which madvise refuses
            self.map.madvise(mmap.MADV_DONTNEED, start, self.data_start + t.offset + t.nbytes - start)

    def _need(self, n: int, what: str) -> None:
        """A ValueError naming the file unless ``n`` bytes are left at ``pos``."""
        if self.pos + n > len(self.map):
            raise ValueError(
                f"{self.path} is cut short or malformed: {_shown(what)} at byte {self.pos:,} needs "
                f"{n:,} bytes, and the file has {len(self.map):,}"
            )

    def _unpack(self, fmt: str, what: str) -> tuple:
        self._need(struct.calcsize(fmt), what)
        values = struct.unpack_from(fmt, self.map, self.pos)
        self.pos += struct.calcsize(fmt)
        return values

    def _string(self) -> str:
        (n,) = self._unpack("<Q", "a string length")
        self._need(n, "a string")
        start, self.pos = self.pos, self.pos + n
        try:
            return self.map[start : self.pos].decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.path}: the string at byte {start:,} is not UTF-8 ({e.reason})") from e

    def _value(self, value_type: int, key: str, depth: int = 0) -> Any:
        if value_type in _SCALARS:
            return self._unpack("<" + _SCALARS[value_type], f"the value of {key}")[0]
        if value_type == _STRING:
            return self._string()
        if value_type == _ARRAY:
            item_type, n = self._unpack("<IQ", f"the array header of {key}")
            if item_type not in _LEAST_BYTES:
                raise ValueError(
                    f"{self.path}: metadata {_shown(key)} is an array of unknown type {item_type}"
                )
            if item_type == _ARRAY and depth + 1 >= _MAX_NESTING:
                raise ValueError(
                    f"{self.path}: metadata {_shown(key)} nests arrays deeper than {_MAX_NESTING}"
                )
            # before any list of n is made: a declared length of 2**60 is a lie, not an allocation
            self._need(n * _LEAST_BYTES[item_type], f"the {n:,} items of {key}")
            if item_type in _SCALARS:  # one unpack for the whole array (token types, scores)
                return list(self._unpack(f"<{n}{_SCALARS[item_type]}", f"the items of {key}"))
            # strings (the vocabulary, the merges): the bulk of the metadata, walked once
            return [self._value(item_type, key, depth + 1) for _ in range(n)]
        raise ValueError(f"{self.path}: metadata {_shown(key)} has a value of unknown type {value_type}")


# -- our reader: the model ------------------------------------------------------------------

# general.architecture -> (model_type, whether llama.cpp's converter permuted the q/k rows)
_ARCHITECTURES = {"llama": ("llama", True), "qwen2": ("qwen2", False)}
# metadata key after "{arch}." -> config field (the fields transformers' loader reads for these)
_CONFIG_KEYS = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "rope.freq_base": "rope_theta",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size",
}
# the metadata sizes of the model (counts and lengths): positive integers in any sound file
_SIZE_KEYS = (
    "context_length", "block_count", "feed_forward_length", "embedding_length", "attention.head_count",
    "attention.head_count_kv", "rope.dimension_count", "vocab_size",
)  # fmt: skip
_TOKEN_IDS = ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id")
# GGUF tensor name -> transformers parameter name; "blk.N." becomes "model.layers.N."
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _load_slmops(p: Path, dtype: Any) -> tuple[Any, Any] | None:
    """Our reader's ``(model, tokenizer)``, or None for a file it does not cover."""
    gguf = _File(p)
    try:
        arch = gguf.metadata.get("general.architecture")
        if arch not in _ARCHITECTURES:
            return _hand_over(p, f"architecture {arch!r}")
        config = _config(gguf, arch)
        _check_config(gguf, config)
        names = _parameter_names(gguf, config)
        if isinstance(names, str):
            return _hand_over(p, f"tensor {names}")
        _check_shapes(gguf, config, names)
        tokenizer = _tokenizer(gguf, p)
        model = _model(gguf, config, names, dtype, permute=_ARCHITECTURES[arch][1])
    except Exception as e:
        if isinstance(e, ValueError) and str(p) in str(e):  # ours, already naming the file
            raise
        # transformers (a tokenizer it cannot build, a value of the wrong type); its messages
        # run over several lines, ours is one
        said = _shown(" ".join(str(e).split()), 300)
        raise ValueError(f"{p} does not load with slmops's GGUF reader ({type(e).__name__}: {said})") from e
    finally:
        del gguf.map  # unmapped once the last view on it is gone; the model holds copies
    return model, tokenizer


def _hand_over(p: Path, what: str) -> None:
    _log.info("%s: slmops's GGUF reader does not cover its %s; using transformers' loader", p, what)
    return None


def _model_type(gguf: _File) -> str:
    arch = gguf.metadata["general.architecture"]
    # transformers' rule: a llama file named exactly "mistral" is a Mistral model
    if arch == "llama" and gguf.metadata.get("general.name") == "mistral":
        return "mistral"
    return _ARCHITECTURES[arch][0]


def _config(gguf: _File, arch: str) -> Any:
    """The transformers config of the metadata, field for field what transformers' GGUF
    loader builds for these architectures."""
    from transformers import AutoConfig

    md = gguf.metadata
    model_type = _model_type(gguf)
    for key in _SIZE_KEYS:  # before transformers divides by them or sizes anything with them
        value = md.get(f"{arch}.{key}", 1)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{gguf.path}: {arch}.{key} is {_shown(repr(value))}, not a positive integer")
    fields: dict[str, Any] = {f: md[f"{arch}.{k}"] for k, f in _CONFIG_KEYS.items() if f"{arch}.{k}" in md}
    if model_type != "qwen2" and f"{arch}.rope.dimension_count" in md:
        fields["head_dim"] = md[f"{arch}.rope.dimension_count"]
    if "vocab_size" not in fields and "tokenizer.ggml.tokens" in md:
        fields["vocab_size"] = len(md["tokenizer.ggml.tokens"])
    for key in _TOKEN_IDS:
        if f"tokenizer.ggml.{key}" in md:
            fields[key.replace("unknown", "unk").replace("padding", "pad")] = md[f"tokenizer.ggml.{key}"]
    fields["tie_word_embeddings"] = all(t.name != "output.weight" for t in gguf.tensors)
    scaling = md.get(f"{arch}.rope.scaling.type", "none")
    if scaling != "none":  # linear or yarn; transformers' loader ignores these keys (a gap of its own)
        rope = {"rope_type": scaling, "rope_theta": fields.pop("rope_theta", 10000.0)}
        rope["factor"] = float(md.get(f"{arch}.rope.scaling.factor", 1.0))
        if f"{arch}.rope.scaling.original_context_length" in md:
            rope["original_max_position_embeddings"] = md[f"{arch}.rope.scaling.original_context_length"]
        fields["rope_parameters"] = rope
    config = AutoConfig.for_model(model_type, **fields)
    if "general.name" in md:
        config._model_name_or_path = md["general.name"]
    config._name_or_path = str(gguf.path.parent)
    return config


def _parameter_names(gguf: _File, config: Any) -> dict[str, str] | str:
    """GGUF tensor name -> parameter name, or the name of a tensor the model has no place for.
    A tensor the model needs and the file lacks is a ValueError."""
    names: dict[str, str] = {}
    for t in gguf.tensors:
        base, _, suffix = t.name.rpartition(".")
        parts = base.split(".")
        if len(parts) == 1 and parts[0] in _TOP_NAMES:
            names[t.name] = f"{_TOP_NAMES[parts[0]]}.{suffix}"
        elif len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _BLOCK_NAMES:
            names[t.name] = f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{suffix}"
        else:
            return t.name
    needed = _needed_parameters(config)
    extra = set(names.values()) - needed
    if extra:  # a bias or a layer past block_count: a model our table does not describe
        return next(k for k, v in names.items() if v in extra)
    missing = needed - set(names.values())
    if missing:
        raise ValueError(f"{gguf.path} lacks tensors the model needs: {', '.join(sorted(missing)[:3])}")
    return names


def _check_config(gguf: _File, config: Any) -> None:
    """The sizes the model is built from, checked before they size anything: each a positive
    integer, and no more layers than the file has tensors (a block_count of 2**31 would
    build billions of names, a vocab_size of millions gigabytes of embedding)."""
    for field in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                  "num_hidden_layers", "vocab_size", "head_dim"):  # fmt: skip
        value = getattr(config, field, None)
        if value is None and field in ("num_key_value_heads", "head_dim"):  # optional: derived
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(
                f"{gguf.path}: the model's {field} is {_shown(repr(value))}, not a positive integer"
            )
    if config.num_hidden_layers > len(gguf.tensors):
        raise ValueError(
            f"{gguf.path} declares {config.num_hidden_layers:,} blocks but has only "
            f"{len(gguf.tensors)} tensors"
        )


def _check_shapes(gguf: _File, config: Any, names: dict[str, str]) -> None:
    """Every tensor of the shape its parameter has in the model of ``config``, checked before
    anything is dequantized or built: the file's sizes, not the file's metadata, bound what
    the load allocates."""
    hidden, inter = config.hidden_size, config.intermediate_size
    heads = config.num_attention_heads
    kv = config.num_key_value_heads or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    q, k = heads * head_dim, kv * head_dim
    shapes = {
        "model.embed_tokens.weight": (config.vocab_size, hidden),
        "lm_head.weight": (config.vocab_size, hidden),
        "model.norm.weight": (hidden,),
        "input_layernorm.weight": (hidden,),
        "post_attention_layernorm.weight": (hidden,),
        "self_attn.q_proj.weight": (q, hidden),
        "self_attn.k_proj.weight": (k, hidden),
        "self_attn.v_proj.weight": (k, hidden),
        "self_attn.o_proj.weight": (hidden, q),
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.bias": (k,),
        "self_attn.v_proj.bias": (k,),
        "mlp.gate_proj.weight": (inter, hidden),
        "mlp.up_proj.weight": (inter, hidden),
        "mlp.down_proj.weight": (hidden, inter),
    }
    for t in gguf.tensors:
        name = names[t.name]
        expected = shapes[name.split(".", 3)[3] if name.startswith("model.layers.") else name]
        if t.shape != expected:
            raise ValueError(
                f"{gguf.path}: tensor {_shown(t.name)} has shape {list(t.shape)}; the model of its "
                f"metadata needs {list(expected)}"
            )


def _needed_parameters(config: Any) -> set[str]:
    block = [f"{v}.weight" for v in _BLOCK_NAMES.values()]
    if config.model_type == "qwen2":  # Qwen2 has q/k/v biases
        block += [f"self_attn.{x}_proj.bias" for x in "qkv"]
    needed = {f"model.layers.{i}.{b}" for i in range(config.num_hidden_layers) for b in block}
    needed |= {"model.embed_tokens.weight", "model.norm.weight"}
    if not config.tie_word_embeddings:
        needed.add("lm_head.weight")
    return needed


def _model(gguf: _File, config: Any, names: dict[str, str], dtype: Any, permute: bool) -> Any:
    import torch
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    heads = config.num_attention_heads
    kv_heads = config.num_key_value_heads or heads
    target = getattr(torch, dtype) if isinstance(dtype, str) else dtype  # "bfloat16", as transformers takes
    state = {}
    with _one_kernel_thread():
        for t in gguf.tensors:
            w = _dequantize(gguf, t)
            gguf.release(t)
            if permute and ".attn_q." in t.name:
                w = _unpermute(w, heads)
            elif permute and ".attn_k." in t.name:
                w = _unpermute(w, kv_heads)
            state[names[t.name]] = torch.from_numpy(w).to(target)
    # from_pretrained with a state dict: transformers' own path for the meta-device model, the
    # tied lm_head and the buffers (rotary frequencies), as in its GGUF loader
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    model = model_class.from_pretrained(None, config=config, state_dict=state, dtype=dtype)
    model.config._name_or_path = model.name_or_path = config._name_or_path
    return model


def _unpermute(w: Any, n_head: int) -> Any:
    """Undo llama.cpp's converter, which interleaves the two rotary halves of every head of
    q (n_head = attention heads) and k (n_head = key/value heads): rows (head, pair, half)
    were written as (head, half, pair). The same reshape as transformers' loader."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ggml types slmops' dequantize kernels read bit for bit as ggml writes them
_KERNEL_FORMATS = {"Q4_0": "q4_0", "Q8_0": "q8_0", "Q4_K": "q4_k", "Q6_K": "q6_k"}


def _dequantize(gguf: _File, t: _Tensor) -> Any:
    """The float32 values of tensor ``t`` as a numpy array of its shape, bit for bit the gguf
    package's: slmops' kernels for their ggml types (matrices), numpy here for q4_1 and the
    float types, the gguf package for every other type. Not torch: its threads stall on a
    loaded 2-core machine (12 s instead of 0.3 s for SmolLM2's blocks; docs/models.md)."""
    import numpy as np

    name, block, block_bytes = _GGML_TYPES[t.type]
    raw = np.frombuffer(gguf.map, np.uint8, t.nbytes, gguf.data_start + t.offset)
    if name == "F32":
        return raw.view(np.float32).reshape(t.shape).copy()  # a copy: the map goes away
    if name == "F16":
        return raw.view(np.float16).astype(np.float32).reshape(t.shape)
    if name == "BF16":  # bfloat16 is the top half of a float32
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(t.shape)
    if name in _KERNEL_FORMATS and len(t.shape) == 2:
        from ..ops.quant import QuantizedTensor

        blocks = raw.reshape(t.shape[0], -1)
        return QuantizedTensor(_KERNEL_FORMATS[name], t.shape, {"data": blocks}).dequantize("float32")
    if name == "Q4_1":  # SmolLM2's type, which our kernels lack: twice the gguf package's speed
        blocks = raw.reshape(-1, block_bytes)
        # the 16 bytes after the scale and the minimum: element j is the low nibble of byte j,
        # element j + 16 its high nibble
        values = np.empty((len(blocks), 32), np.float32)
        np.bitwise_and(blocks[:, 4:], 0x0F, out=values[:, :16], casting="unsafe")
        np.right_shift(blocks[:, 4:], 4, out=values[:, 16:], casting="unsafe")
        # a float16 scale times a 4-bit code is exact in float32, so the one rounding (+ min)
        # is the gguf package's
        values *= blocks[:, 0:2].view(np.float16).astype(np.float32)
        values += blocks[:, 2:4].view(np.float16).astype(np.float32)
        return values.reshape(t.shape)
    from gguf import GGMLQuantizationType, dequantize

    values = dequantize(raw.reshape(*t.shape[:-1], -1), GGMLQuantizationType(t.type))
    return np.ascontiguousarray(values, np.float32).reshape(t.shape)


@contextlib.contextmanager
def _one_kernel_thread() -> Iterator[None]:
    """slmops' kernels on one OpenMP thread while a file loads: a fork and join per tensor
    stalls on a busy machine (1.4 s instead of 0.06 s for 106M q4_0 weights on the 2-core
    VM), and one thread already dequantizes ~1.5G weights a second."""
    from .. import get_num_threads, set_num_threads

    threads = get_num_threads()
    set_num_threads(1)
    try:
        yield
    finally:
        set_num_threads(threads)


# -- our reader: the tokenizer --------------------------------------------------------------


def _tokenizer(gguf: _File, p: Path) -> Any:
    """transformers' GGUF tokenizer, built from the metadata already parsed: the same
    converters and the same tokenizer class AutoTokenizer picks, with the same arguments."""
    from transformers.integrations.gguf import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    md = gguf.metadata
    # llama.cpp's keys renamed as transformers' GGUF tokenizer reader renames them
    groups = {
        group: {name: md[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in md}
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    vocabulary, init = groups["tokenizer"], groups["tokenizer_config"]
    if "tokens" not in vocabulary:
        raise ValueError(f"{p} has no tokenizer (no tokenizer.ggml.tokens in its metadata)")
    kind = vocabulary.get("tokenizer_type")
    if kind == "llama":  # sentencepiece files without the flag: llama.cpp adds BOS
        init.setdefault("add_bos_token", True)
    elif kind == "gemma4":
        init["add_bos_token"] = False
    tokens = vocabulary["tokens"]
    if not isinstance(tokens, list):
        raise ValueError(f"{p}: tokenizer.ggml.tokens is {_shown(repr(tokens))}, not a list of tokens")
    for name, key in zip(("bos_token", "eos_token", "unk_token", "pad_token"), _TOKEN_IDS, strict=True):
        index = md.get(f"tokenizer.ggml.{key}")
        if index is not None and (not isinstance(index, int) or not 0 <= index < len(tokens)):
            raise ValueError(
                f"{p}: tokenizer.ggml.{key} is {_shown(repr(index))}, not an index into its "
                f"{len(tokens):,} tokens"
            )
        init[name] = tokens[index] if index is not None else None
    backend, extra = convert_gguf_tokenizer(md["general.architecture"], vocabulary)
    tokenizer_class = _tokenizer_class(gguf)
    tokenizer = tokenizer_class(
        tokenizer_object=backend,
        name_or_path=str(p.parent),
        is_local=True,
        local_files_only=False,
        vocab_file=None,
        added_tokens_decoder={},
        **init,
        **extra,
    )
    _split_like_llamacpp(tokenizer, md)
    return tokenizer


# llama.cpp's pre-tokenizers (tokenizer.ggml.pre) that cut every digit off before GPT-2's split
# (llama-vocab.cpp: the regex "\p{N}", then GPT-2's), as these models' own tokenizer.json do
# (Digits(individual_digits=True) before ByteLevel). transformers' GGUF converter (5.25) knows
# none of them and splits with GPT-2's regex alone, which keeps a space with the digits after
# it: on SmolLM2 " ١٢٣" starts with the token "ĠÙ" where llama.cpp has "Ġ", "Ù", and "x  ==  0"
# ends "Ġ", "Ġ", "0" where llama.cpp has "ĠĠ", "0" (tests/py/test_tokenizer_llamacpp.py).
_DIGITS_APART = frozenset(
    {"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"}
)


def _split_like_llamacpp(tokenizer: Any, metadata: dict[str, Any]) -> None:
    """Give a byte-level tokenizer built from a GGUF's metadata the pre-tokenizer llama.cpp
    uses for it where transformers' converter leaves GPT-2's (``_DIGITS_APART``); both readers
    call it, so their tokenizers stay the same."""
    from tokenizers import pre_tokenizers

    backend = tokenizer.backend_tokenizer
    if (
        metadata.get("tokenizer.ggml.model") == "gpt2"
        and metadata.get("tokenizer.ggml.pre") in _DIGITS_APART
        and isinstance(backend.pre_tokenizer, pre_tokenizers.ByteLevel)  # not a split of transformers'
    ):
        digits = pre_tokenizers.Digits(individual_digits=True)
        backend.pre_tokenizer = pre_tokenizers.Sequence([digits, backend.pre_tokenizer])


def _tokenizer_class(gguf: _File) -> Any:
    """The class AutoTokenizer gives a GGUF of this architecture: transformers' mapping for
    the config type, its generic backend where the mapping has none (llama) or needs files a
    GGUF lacks (mistral's)."""
    from transformers import TokenizersBackend
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING

    cls = TOKENIZER_MAPPING.get(CONFIG_MAPPING[_model_type(gguf)], None)
    if cls is None or getattr(cls, "__name__", "") == "MistralCommonBackend":
        return TokenizersBackend
    return cls
