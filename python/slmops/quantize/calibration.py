"""Calibration for the compression algorithms that look at activations (GPTQ, and the
ones that come after it): token windows from text, and the layer-by-layer drivers.

The drivers capture the inputs of the first decoder layer for all calibration samples,
then go through the layers in turn, each layer's inputs being the outputs of the
*compressed* layers before it ("true sequential"):
  * ``run_linear_sequential`` (GPTQ, SparseGPT, Wanda): within a layer too, each linear
    is compressed from the inputs the compressed linears before it produce, in one pass
    per layer when the samples fit in memory at once;
  * ``run_layerwise`` (AWQ, SmoothQuant, which fold scales across a layer's linears): the
    algorithm observes the whole layer, compresses it, then the samples go through it.
Peak memory: the calibration activations, n_samples x seq_len x hidden_size values twice
(a layer's inputs and outputs; 128 x 512 x 4096 float32 is 1 GiB each), plus the layer's
working activations: for all samples at once in the one-pass schedule, which runs only
when they fit the ``memory_budget`` option (default a quarter of physical memory, at most
8 GiB; ``layer_activations_fit``), else for one chunk of samples at a time. The drivers
also fix glibc's mmap threshold (``_large_allocations_from_mmap``), without which freed
activations stay resident and the peak grows layer after layer.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .options import CalibrationOptions


def calibration_text(source: str | os.PathLike[str] | Sequence[str] | None = None) -> str:
    """The text to calibrate on: ``None`` for the reference corpus (KJV training split), a
    path to a .txt or .jsonl file (a ``"text"`` field per line), or a list of strings."""
    from .. import zoo

    if source is None:
        return zoo.kjv_split("train")
    if isinstance(source, (list, tuple)):
        wrong = next((x for x in source if not isinstance(x, str)), None)
        if wrong is not None:  # token ids would become the text "[1, 2, 3]"
            raise TypeError(
                f"calibration as a list holds texts, got a {type(wrong).__name__}; pass token ids "
                "as a LongTensor [n_samples, seq_len]"
            )
        return "\n\n".join(source)
    path = Path(source)
    if not path.is_file():
        raise ValueError(
            f"calibration data {str(source)!r} is not a file (give a .txt/.jsonl path or a list of texts)"
        )
    if path.suffix == ".jsonl":
        texts = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if line.strip():
                try:
                    texts.append(str(json.loads(line)["text"]))
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(
                        f"{path} line {i + 1}: expected a JSON object with a 'text' field"
                    ) from e
        return "\n\n".join(texts)
    return path.read_text(encoding="utf-8")


def calibration_batches(
    tokenizer: Any,
    source: str | os.PathLike[str] | Sequence[str] | None = None,
    *,
    n_samples: int = CalibrationOptions.model_fields["n_samples"].default,
    seq_len: int = CalibrationOptions.model_fields["seq_len"].default,
    vocab_size: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """``n_samples`` windows of ``seq_len`` tokens [n_samples, seq_len], at random offsets
    (seeded) in the text. Raises for empty or too short text, and for token ids
    beyond ``vocab_size`` (a tokenizer that is not the model's)."""
    if n_samples <= 0 or seq_len <= 0:
        raise ValueError(f"n_samples and seq_len must be positive, got {n_samples} and {seq_len}")
    text = calibration_text(source)
    if not text.strip():
        raise ValueError("the calibration text is empty")
    gen = torch.Generator().manual_seed(seed)
    # A long corpus: tokenize only a slice of characters at each random offset (generous:
    # no tokenizer averages 16 characters per token), not the whole text.
    chars = 16 * seq_len
    if len(text) > n_samples * chars:
        offsets = torch.randint(0, len(text) - chars, (n_samples,), generator=gen).tolist()
        pieces = tokenizer([text[o : o + chars] for o in offsets])["input_ids"]
        if all(len(p) >= seq_len for p in pieces):
            return _checked(torch.tensor([p[:seq_len] for p in pieces], dtype=torch.long), vocab_size)
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    if ids.numel() < seq_len:
        raise ValueError(
            f"the calibration text has {ids.numel()} tokens, fewer than one window of seq_len={seq_len}; "
            "give more text or a shorter seq_len"
        )
    starts = torch.randint(0, ids.numel() - seq_len + 1, (n_samples,), generator=gen)
    return _checked(torch.stack([ids[s : s + seq_len] for s in starts.tolist()]), vocab_size)


def _checked(batches: torch.Tensor, vocab_size: int | None) -> torch.Tensor:
    if vocab_size is not None and int(batches.max()) >= vocab_size:
        raise ValueError(
            f"the tokenizer produced id {int(batches.max())} but the model's vocabulary has {vocab_size} "
            "entries: this tokenizer does not belong to the model"
        )
    return batches


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder layers of a Hugging Face causal LM (``model.model.layers``)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise ValueError(
            f"{type(model).__name__} has no decoder layer list at model.layers; calibrated compression "
            "handles Hugging Face causal LMs built as a list of decoder layers "
            "(Llama, Qwen2, Mistral, Phi-3, Gemma)"
        )
    if not any(isinstance(m, nn.Linear) for m in layers[0].modules()):
        raise ValueError("the decoder layers hold no nn.Linear modules; nothing to compress")
    return layers


def calibration_tokens(
    model: nn.Module, tokenizer: Any, calibration: Any, *, n_samples: int, seq_len: int, method: str
) -> torch.Tensor:
    """The calibration token ids [n, seq_len] for ``model``: ``calibration`` as given when it
    is a LongTensor, else windows of text (see ``calibration_batches``) that fit the model's
    context, checked against its vocabulary."""
    if isinstance(calibration, torch.Tensor):
        if calibration.dtype != torch.long or calibration.ndim != 2 or calibration.numel() == 0:
            raise ValueError("calibration token ids must be a non-empty LongTensor [n_samples, seq_len]")
        return calibration
    if tokenizer is None:
        raise ValueError(f"{method} calibrates on text: pass tokenizer= (or calibration= token ids)")
    config = getattr(model, "config", None)
    return calibration_batches(
        tokenizer, calibration, n_samples=n_samples,
        seq_len=min(seq_len, getattr(config, "max_position_embeddings", seq_len)),
        vocab_size=getattr(config, "vocab_size", None),
    )  # fmt: skip


def linears_by_layer(model: nn.Module, names: Sequence[str]) -> tuple[list[list[str]], list[str]]:
    """``names`` (module names of linears) split by decoder layer, and those in no layer."""
    layers = decoder_layers(model)
    layer_of = {id(m): i for i, layer in enumerate(layers) for m in layer.modules()}
    by_layer: list[list[str]] = [[] for _ in layers]
    outside = []
    for name in names:
        i = layer_of.get(id(model.get_submodule(name)))
        (outside if i is None else by_layer[i]).append(name)
    return by_layer, outside


class _Captured(Exception):
    pass


_MMAP_THRESHOLD = 1 << 20  # bytes; glibc's default threshold starts at 128 KiB and grows to 32 MiB
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def _large_allocations_from_mmap() -> None:
    """Makes glibc serve every allocation of ``_MMAP_THRESHOLD`` bytes or more with its own
    mapping, given back to the system when freed, for the rest of the process.

    glibc's default raises its mmap threshold each time a mapped block is freed, up to 32 MiB;
    the activation tensors of the calibration passes (a chunk's [8, 512, hidden] values: MiBs
    each, freed and reallocated at slightly different sizes layer after layer) then come from
    the heap, whose holes stay resident: GPTQ on SmolLM2 grew to 7 GB, 13x the float model,
    against 1.5 GB with this threshold fixed. A no-op where the C library is not glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):  # musl, macOS, Windows: their allocators differ
        mallopt = None
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)


def _first_layer_inputs(
    model: nn.Module, batches: torch.Tensor, batch_size: int
) -> list[tuple[torch.Tensor, dict]]:
    """The inputs (hidden states and keyword arguments) of the first decoder layer for each
    chunk of ``batch_size`` calibration samples: the model runs up to that layer only. Sets
    the process's allocator up for the layer-by-layer passes that follow
    (``_large_allocations_from_mmap``)."""
    _large_allocations_from_mmap()
    layers = decoder_layers(model)
    device = next(model.parameters()).device
    inputs: list[tuple[torch.Tensor, dict]] = []

    def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        inputs.append((hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _Captured

    handle = layers[0].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        for chunk in batches.split(batch_size):
            try:
                model(chunk.to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return inputs


def _output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def run_layerwise(
    model: nn.Module,
    batches: torch.Tensor,
    compress_layer: Callable[[int, nn.Module, Callable[[], None]], None],
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> None:
    """For each decoder layer: ``compress_layer(index, layer, forward)`` where ``forward()``
    runs every calibration sample through the layer (so hooks the callback registers see
    the inputs); then the samples go through the compressed layer to the next one. For
    algorithms that fold scales across a layer's linears (AWQ, SmoothQuant)."""
    from tqdm.auto import tqdm

    layers = decoder_layers(model)
    inputs = _first_layer_inputs(model, batches, batch_size)

    def run_through(layer: nn.Module) -> list[torch.Tensor]:
        return [_output(layer(hidden, **kwargs)) for hidden, kwargs in inputs]

    for i, layer in enumerate(
        tqdm(layers, desc="calibrated compression", unit="layer", disable=not progress)
    ):
        compress_layer(i, layer, lambda layer=layer: run_through(layer))
        outs = run_through(layer)
        inputs = [(o, kw) for o, (_, kw) in zip(outs, inputs, strict=True)]


def layer_activations_fit(
    model: nn.Module, n_samples: int, seq_len: int, memory_budget: int | None = None
) -> bool:
    """Whether a decoder layer's working activations for all calibration samples at once fit
    in ``memory_budget`` bytes (default: a quarter of physical memory, at most 8 GiB): the
    one-pass schedule of ``run_linear_sequential`` holds them all. Per token: 6 hidden-size
    and 3 intermediate-size vectors in the model's dtype (a layer's peak with fused
    attention, with a margin)."""
    if memory_budget is None:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        memory_budget = min(8 << 30, physical // 4)
    config = getattr(model, "config", None)
    hidden = int(getattr(config, "hidden_size", 0) or 4096)
    intermediate = int(getattr(config, "intermediate_size", 0) or 4 * hidden)
    element = next(model.parameters()).element_size()
    return n_samples * seq_len * (6 * hidden + 3 * intermediate) * element <= memory_budget


class _Stop(Exception):
    """Ends a partial pass through a layer at the next linear still to compress."""


class _Reached:
    """What a chunk's forward hands the driver when it reaches a linear still to compress."""

    def __init__(self, name: str, x: torch.Tensor) -> None:
        self.name, self.x = name, x


@torch.no_grad()
def run_linear_sequential(
    model: nn.Module,
    batches: torch.Tensor,
    names_by_layer: Sequence[Sequence[str]],
    compress: Callable[[str, InputStats], None],
    *,
    hessian: bool = False,
    sink_weight: float = 1.0,
    moments: bool = False,
    batch_size: int = 8,
    progress: bool = True,
    memory_budget: int | None = None,
) -> None:
    """True sequential down to the linears (GPTQ's ``--true-sequential``, applied to every
    per-linear algorithm): in each decoder layer, the linears (module names in
    ``names_by_layer``) are compressed in the order the layer calls them, each from the
    inputs that the already compressed linears before it produce; linears called on one
    tensor (q/k/v, gate/up) share one ``InputStats``. ``compress(name, stats)`` must leave
    the linear computing with its compressed weight.

    Samples go through a layer in chunks of ``batch_size``. When the layer's activations for
    all of them fit in memory at once (``layer_activations_fit``), each layer takes one
    forward pass: every chunk's forward runs as a greenlet that pauses at each linear still
    to compress until all chunks are there, and the linear is compressed before any of them
    runs it. Otherwise there is one partial pass over the chunks per group of linears
    (stopped at the next linear to compress) and a last full pass for the next layer's
    inputs: the same result, more passes, one chunk's activations at a time."""
    from tqdm.auto import tqdm

    layers = decoder_layers(model)
    inputs = _first_layer_inputs(model, batches, batch_size)
    n_samples, seq_len = batches.shape
    schedule = _OnePass if layer_activations_fit(model, n_samples, seq_len, memory_budget) else _PartialPasses

    def new_stats(x: torch.Tensor) -> InputStats:
        return InputStats.empty(x.shape[-1], hessian=hessian, moments=moments, sink_weight=sink_weight)

    for i, layer in enumerate(
        tqdm(layers, desc="calibrated compression", unit="layer", disable=not progress)
    ):
        targets = set(names_by_layer[i])
        run = schedule(compress, new_stats)

        def pre_hook(name: str, run: _OnePass | _PartialPasses = run) -> Callable:
            def hook(module: nn.Module, args: tuple) -> None:
                if name not in run.done:
                    run.reached(name, args[0])

            return hook

        handles = [model.get_submodule(name).register_forward_pre_hook(pre_hook(name)) for name in targets]
        try:
            outs = run(layer, inputs)
        finally:
            for h in handles:
                h.remove()
        if run.done != targets:
            raise RuntimeError(
                f"decoder layer {i} never called {sorted(targets - run.done)} in its forward: "
                "there are no inputs to calibrate them on"
            )
        inputs = [(o, kw) for o, (_, kw) in zip(outs, inputs, strict=True)]


class _OnePass:
    """Every chunk's forward through the layer runs in a greenlet that pauses at each linear
    still to compress (``reached``); once all chunks are there, it is compressed from all
    their inputs, and they go on."""

    def __init__(self, compress: Callable[[str, InputStats], None], new_stats: Callable) -> None:
        self.compress, self.new_stats, self.done = compress, new_stats, set()

    def reached(self, name: str, x: torch.Tensor) -> None:
        from greenlet import getcurrent

        getcurrent().parent.switch(_Reached(name, x))

    def __call__(self, layer: nn.Module, inputs: list[tuple[torch.Tensor, dict]]) -> list[torch.Tensor]:
        from greenlet import greenlet

        workers = [greenlet(lambda h=h, kw=kw: _output(layer(h, **kw))) for h, kw in inputs]
        states = [w.switch() for w in workers]
        previous: list[torch.Tensor] = []
        stats = None
        while isinstance(states[0], _Reached):
            names = {s.name if isinstance(s, _Reached) else None for s in states}
            if len(names) != 1:
                raise RuntimeError(
                    f"the calibration chunks reached different linears: {sorted(map(str, names))}"
                )
            xs = [s.x for s in states]
            if len(xs) != len(previous) or any(x is not p for x, p in zip(xs, previous, strict=True)):
                stats = self.new_stats(xs[0])  # a new input (else a linear sharing the last one's)
                for x in xs:
                    stats.add(x)
            previous = xs
            self.compress(states[0].name, stats)
            self.done.add(states[0].name)
            states = [w.switch() for w in workers]
        return states


class _PartialPasses:
    """Per group of linears reading one tensor: a pass over the chunks that collects the
    group's input statistics, then the group is compressed. The first chunk finds the group
    (it runs on to the next linear to compress); the others stop as soon as the group's
    input is counted. The pass that meets no linear to compress gives the layer's outputs."""

    def __init__(self, compress: Callable[[str, InputStats], None], new_stats: Callable) -> None:
        self.compress, self.new_stats, self.done = compress, new_stats, set()
        self.group: list[str] = []
        self.stats: InputStats | None = None
        self.input: torch.Tensor | None = None
        self.discovering = True

    def reached(self, name: str, x: torch.Tensor) -> None:
        if not self.discovering:  # the group is known: this chunk's input to it is all it gives
            if name != self.group[0]:
                raise RuntimeError(f"a calibration chunk reached {name} before {self.group[0]}")
            self.stats.add(x)
            raise _Stop
        if self.group and x is not self.input:
            raise _Stop  # a linear of the next group: this one is complete
        if not self.group:
            self.stats, self.input = self.new_stats(x), x
            self.stats.add(x)
        self.group.append(name)

    def __call__(self, layer: nn.Module, inputs: list[tuple[torch.Tensor, dict]]) -> list[torch.Tensor]:
        while True:
            self.group, self.stats, self.input, self.discovering = [], None, None, True
            outs = []
            for hidden, kwargs in inputs:
                try:
                    outs.append(_output(layer(hidden, **kwargs)))
                except _Stop:
                    pass
                self.discovering = False
            if not self.group:
                return outs  # nothing was left to compress: that was the full pass
            for name in self.group:
                self.compress(name, self.stats)
                self.done.add(name)


@dataclass
class InputStats:
    """What the compression algorithms need to know about one linear's calibration inputs
    (rows x of [rows, in_features]); linears fed the same tensor (q/k/v, gate/up) share one.

    hessian: sum x x^T [K, K] (GPTQ, SparseGPT), each window's first token counted
    ``sink_weight`` times (see HessianOptions); with ``moments``, per input channel: sq_sum
    sum x^2 (Wanda's norms), abs_max max |x| and abs_sum sum |x| (SmoothQuant, AWQ); rows:
    how many rows were seen; sample: up to ``keep`` rows of x per batch, evenly spread
    over the tokens after each window's first, and first: each window's first token, apart
    (AWQ searches its scales on them and weighs the two; see ``slmops.quantize.awq``)."""

    hessian: np.ndarray | None = None
    sq_sum: np.ndarray | None = None
    abs_max: np.ndarray | None = None
    abs_sum: np.ndarray | None = None
    rows: int = 0
    sample: list[torch.Tensor] = field(default_factory=list)
    first: list[torch.Tensor] = field(default_factory=list)
    sink_weight: float = 1.0

    @classmethod
    def empty(cls, k: int, *, hessian: bool, moments: bool, sink_weight: float = 1.0) -> InputStats:
        """Nothing seen yet, for inputs of k features: what ``hessian`` and ``moments`` ask for."""
        stats = cls(hessian=np.zeros((k, k), np.float32) if hessian else None, sink_weight=sink_weight)
        if moments:
            stats.sq_sum, stats.abs_sum, stats.abs_max = np.zeros(k), np.zeros(k), np.zeros(k, np.float32)
        return stats

    def add(self, x: torch.Tensor, keep_per_batch: int = 0) -> None:
        """Counts the rows of x [batch, seq, in_features] (or [rows, in_features])."""
        first = x[:, 0].detach().float() if x.dim() == 3 else None
        rest = x[:, 1:] if x.dim() == 3 and x.shape[1] > 1 else None
        x = x.detach().reshape(-1, x.shape[-1]).float()
        if self.hessian is not None:
            from ..ops import hessian_accumulate

            hessian_accumulate(self.hessian, x)
            if first is not None and self.sink_weight != 1.0:  # already counted once above
                hessian_accumulate(self.hessian, first * math.sqrt(self.sink_weight - 1.0))
        if self.sq_sum is not None:
            self.sq_sum += x.square().sum(0).double().numpy()
            a = x.abs()
            np.maximum(self.abs_max, a.amax(0).numpy(), out=self.abs_max)
            self.abs_sum += a.sum(0).double().numpy()
        self.rows += x.shape[0]
        if keep_per_batch:
            rows = x if rest is None else rest.detach().reshape(-1, x.shape[-1]).float()
            step = max(1, rows.shape[0] // keep_per_batch)
            self.sample.append(rows[::step][:keep_per_batch].clone())
            if rest is not None:
                self.first.append(first.clone())


def observe_inputs(
    model: nn.Module,
    names: Sequence[str],
    forward: Callable[[], None],
    *,
    hessian: bool = False,
    moments: bool = False,
    keep: int = 0,
) -> dict[str, InputStats]:
    """Runs ``forward()`` with hooks on the linears ``names`` of ``model`` and returns their
    input statistics (``InputStats``; the same object for linears that share an input):
    the Hessian if ``hessian``, the per-channel moments if ``moments``, and ``keep`` rows
    of inputs per calibration batch."""
    stats: dict[str, InputStats] = {}
    owner: dict[str, str] = {}  # the linear whose hook counts this linear's input
    last: list[Any] = [None, None]  # the input tensor counted last, and who counted it

    def observe(name: str, x: torch.Tensor) -> None:
        if name not in owner:  # first batch: q/k/v (gate/up) read the same tensor object
            owner[name] = last[1] if x is last[0] else name
            if owner[name] == name:
                stats[name] = InputStats.empty(x.shape[-1], hessian=hessian, moments=moments)
            else:
                stats[name] = stats[owner[name]]
        if owner[name] != name:
            if x is not last[0] or last[1] != owner[name]:
                raise RuntimeError(f"{name} shared its input with {owner[name]} in one batch but not another")
            return
        stats[name].add(x, keep)
        last[:] = [x, name]

    def hook(name: str) -> Callable:
        return lambda module, args, output: observe(name, args[0])

    hooks = [model.get_submodule(name).register_forward_hook(hook(name)) for name in names]
    try:
        forward()
    finally:
        for h in hooks:
            h.remove()
    return stats
