"""The native decode engine against transformers on the same weights: logits of prefill
and decode, greedy tokens, batching, sampling, and bad input."""

import copy

import numpy as np
import pytest
import torch
from slmops import quantize_model
from slmops.engine import CacheFullError, Engine, SamplingOptions
from slmops.nn import SparseLinear
from torch import nn


def exact(model, **options):
    """An engine whose cache keeps the model's fp32 keys and values (no fp16 rounding) and
    that runs the model's own head (the default head_format quantizes a compressed model's)."""
    return Engine(model, **{"kv_dtype": "float32", "head_format": None, **options})


# Float engine vs float torch: the same products summed in another order (oneDNN sgemm,
# blocked attention). 1e-4 of the logits' scale is ~100x the fp32 rounding we see (5e-7).
FLOAT_TOL = 1e-4


def tiny(arch="llama", seed=0, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    base = dict(
        vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    if arch == "qwen2":
        base["tie_word_embeddings"] = False
    if arch == "phi3":  # its default pad id lies past this vocabulary
        base["pad_token_id"] = 0
    cfg = AutoConfig.for_model(arch, **{**base, **overrides})
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # random biases: transformers initialises them to zero
        for mod in model.modules():
            if isinstance(mod, nn.Linear) and mod.bias is not None:
                mod.bias.normal_(0, 0.5)
    return model


def torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids))[None]).logits[0].numpy()


def close(got, ref, tol):
    scale = float(np.abs(ref).max())
    err = float(np.abs(got - ref).max())
    assert err <= tol * scale, f"max error {err:.3g} > {tol} x {scale:.3g}"


def decode_logits(engine, ids, n_prefill):
    """Logits of ids[n_prefill - 1:], the prompt run at once and the rest one token per step."""
    seq = engine._native.add_sequence()
    try:
        rows = [engine._native.forward([(seq, np.asarray(ids[:n_prefill], np.int32), False)])[0]]
        for t in ids[n_prefill:]:
            rows.append(engine._native.forward([(seq, np.array([t], np.int32), False)])[0])
        return np.stack(rows)
    finally:
        engine._native.remove_sequence(seq)


@pytest.mark.parametrize(
    "arch, overrides",
    [
        ("llama", {}),
        ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}, "attention_bias": True}),
        (
            "llama",
            {"hidden_size": 72, "num_attention_heads": 6, "num_key_value_heads": 3},
        ),  # head_dim 12: SIMD tails
        ("llama", {"head_dim": 24}),  # heads wider than hidden / n_heads
        ("qwen2", {}),  # q/k/v biases, separate head
        ("mistral", {"sliding_window": 8}),  # the window cuts the 40-token sequence
        ("phi3", {}),  # fused qkv_proj and gate_up_proj
    ],
)
def test_float_logits_equal_transformers_on_prefill_and_decode(arch, overrides):
    model = tiny(arch, **overrides)
    ids = (np.arange(40) * 7 + 3) % 320
    engine = exact(model)
    ref = torch_logits(model, ids)
    close(engine.logits(ids), ref, FLOAT_TOL)
    # 8 prompt tokens, then 32 decode steps through the cache
    close(decode_logits(engine, ids, 8), ref[7:], FLOAT_TOL)


# Quantized linears, float activations: both paths multiply by the same dequantized weights
# (torch's QuantLinear runs the same qmatmul kernels), so the float tolerance holds.
@pytest.mark.parametrize(
    "arch, fmt",
    [("llama", "int4"), ("llama", "int8"), ("llama", "q4_0"), ("llama", "q8_0"), ("llama", "nf4"),
     ("phi3", "int4"), ("phi3", "ternary")],  # phi3: fused projections split by rows
)  # fmt: skip
def test_quantized_model_logits_equal_its_torch_forward(arch, fmt):
    model = tiny(arch, hidden_size=128, intermediate_size=256)
    quantize_model(
        model, "rtn", format=fmt, progress=False, **({"double_quant": True} if fmt == "nf4" else {})
    )
    ids = (np.arange(24) * 5 + 1) % 320
    engine = exact(model)
    ref = torch_logits(model, ids)
    close(engine.logits(ids), ref, FLOAT_TOL)
    close(decode_logits(engine, ids, 4), ref[3:], FLOAT_TOL)


def test_default_head_is_q8_0_for_a_compressed_model_and_the_models_own_otherwise():
    ids = (np.arange(24) * 5 + 1) % 320
    model = tiny("llama", hidden_size=128, intermediate_size=256)
    ref = torch_logits(model, ids)
    close(Engine(model, kv_dtype="float32").logits(ids), ref, FLOAT_TOL)  # float model: its fp32 head
    int8_model = copy.deepcopy(model)
    quantize_model(int8_model, "rtn", format="int4", activation="int8", progress=False)
    default = Engine(int8_model, kv_dtype="float32").logits(ids)
    np.testing.assert_array_equal(default, exact(int8_model, head_format="q8_0").logits(ids))
    assert np.abs(default - exact(int8_model).logits(ids)).max() > 0  # not the fp32 head
    # Layers with float activations: the auto head still multiplies int8 ones (its fast
    # path), within their error of the q8_0 head on float activations (see the int8 test).
    quantize_model(model, "rtn", format="int4", progress=False)
    default = Engine(model, kv_dtype="float32").logits(ids)
    float_head = exact(model, head_format="q8_0").logits(ids)
    close(default, float_head, 0.03)
    assert np.abs(default - float_head).max() > 0
    # A head the model already holds quantized is its own.
    model = tiny("llama", hidden_size=128, intermediate_size=256)
    quantize_model(model, "rtn", format="int4", skip=[], progress=False)
    assert type(model.lm_head).__name__ == "QuantLinear"
    np.testing.assert_array_equal(Engine(model, kv_dtype="float32").logits(ids), exact(model).logits(ids))


def test_an_fp16_cache_stays_within_half_precision_of_the_fp32_one():
    # Keys and values rounded to fp16 (relative error 2^-11 each) move the logits of a
    # 2-layer model by well under 1% of their scale; the same tokens come out greedily.
    model = tiny("llama")
    ids = (np.arange(40) * 7 + 3) % 320
    ref = torch_logits(model, ids)
    half = Engine(model)  # the default cache
    close(decode_logits(half, ids, 8), ref[7:], 0.005)
    assert (
        half.generate(ids[:8], max_new_tokens=30, stop_token_ids=[]).tokens
        == exact(model).generate(ids[:8], max_new_tokens=30, stop_token_ids=[]).tokens
    )


@pytest.mark.parametrize(
    "arch, overrides", [("llama", {}), ("llama", {"head_dim": 24}), ("mistral", {"sliding_window": 8})]
)
def test_an_int8_cache_stays_within_its_rounding_and_holds_twice_the_tokens(arch, overrides):
    # Each key and value row rounded to 127 levels of its absmax: up to 0.4% of the row's
    # largest element each (measured 0.26-0.43% of the logits' scale on these models, fp16
    # 0.01-0.02%); the bound is 1%, and the cache must differ from fp32 (the int8 path ran).
    model = tiny(arch, **overrides)
    ids = (np.arange(40) * 7 + 3) % 320
    ref = torch_logits(model, ids)
    kv_memory = 1 << 20
    engine = Engine(model, kv_dtype="int8", kv_memory=kv_memory)
    got = decode_logits(engine, ids, 8)
    close(got, ref[7:], 0.01)
    assert np.abs(got - decode_logits(exact(model), ids, 8)).max() > 0
    # Bytes a block: codes plus one fp32 scale per token, head and key/value, against 2 bytes a value.
    d = overrides.get("head_dim", 16)
    per_token = 2 * 2 * 2  # layers x (k, v) x kv heads
    assert engine._native.max_blocks == kv_memory // (per_token * 16 * (d + 4))
    assert Engine(model, kv_memory=kv_memory)._native.max_blocks == kv_memory // (per_token * 16 * d * 2)


def test_int8_cache_greedy_tokens_equal_the_fp32_caches_on_the_teacher():
    prompt = "And the LORD spake unto Moses"
    tokens = [
        Engine("kjv-teacher", kv_dtype=dt).generate(prompt, max_new_tokens=64, stop_token_ids=[]).tokens
        for dt in ("int8", "float32")
    ]
    assert tokens[0] == tokens[1]


def test_int8_activations_within_their_error_of_float_activations():
    # int8 activations in blocks of 32 (qmatmul's kInt8): ~0.4% relative error per product
    # (half a step of 127 levels); through 2 layers and the head the logits stay within 3%.
    model = tiny("llama", hidden_size=128, intermediate_size=256)
    quantize_model(model, "rtn", format="q4_0", progress=False)
    ids = (np.arange(24) * 5 + 1) % 320
    ref = exact(model).logits(ids)
    for mod in model.modules():
        if hasattr(mod, "activation") and hasattr(mod, "qweight"):
            mod.activation = "int8"
    got = exact(model).logits(ids)
    close(got, ref, 0.03)
    close(got, torch_logits(model, ids), FLOAT_TOL)  # torch runs the same int8 kernels


@pytest.mark.parametrize("pattern", ["2:4", "csr"])
def test_sparse_model_logits_equal_its_torch_forward(pattern):
    model = tiny("llama", hidden_size=128, intermediate_size=256)
    with torch.no_grad():
        for mod in list(model.model.modules()):
            for child_name, child in list(mod.named_children()):
                if isinstance(child, nn.Linear):
                    if pattern == "csr":  # half the weights zeroed at random: CSR keeps the rest
                        child.weight.mul_(torch.rand_like(child.weight) < 0.5)
                    sparse = SparseLinear.from_linear(child, pattern, prune=pattern != "csr")
                    setattr(mod, child_name, sparse)
    ids = (np.arange(24) * 5 + 1) % 320
    engine = exact(model)
    ref = torch_logits(model, ids)
    close(engine.logits(ids), ref, FLOAT_TOL)
    close(decode_logits(engine, ids, 4), ref[3:], FLOAT_TOL)


@pytest.mark.parametrize("tied", [True, False])
def test_quantized_head_and_embedding_table_match_dequantized_weights(tied):
    # head_format quantizes the head (tied: the one table of head and embedding): the engine
    # must equal a torch model holding the dequantized table.
    from slmops.ops import quantize

    model = tiny("llama", tie_word_embeddings=tied)
    # float activations in the body, so the head takes them too: exact against the reference
    quantize_model(model, "rtn", format="int8", activation="float", progress=False)
    ids = (np.arange(30) * 3 + 2) % 320
    engine = exact(model, head_format="q8_0")
    ref_model = copy.deepcopy(model)
    head = ref_model.get_output_embeddings().weight
    deq = np.asarray(quantize(head.detach().numpy(), "q8_0").dequantize("float32"))
    with torch.no_grad():
        head.copy_(torch.from_numpy(deq))
    assert (ref_model.get_input_embeddings().weight is head) == tied
    close(engine.logits(ids), torch_logits(ref_model, ids), FLOAT_TOL)


def test_greedy_tokens_equal_transformers_generate_on_the_teacher():
    import slmops

    model, tok = slmops.zoo.load("kjv-teacher")
    engine = exact((model, tok))
    prompt = tok("And God said")["input_ids"]
    got = engine.generate(prompt, max_new_tokens=64, stop_token_ids=[])
    with torch.no_grad():
        ref = model.generate(
            torch.tensor([prompt]), max_new_tokens=64, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, len(prompt) :].tolist()
    assert got.tokens == ref
    assert got.finish_reason == "length"
    assert got.text == tok.decode(ref, skip_special_tokens=True)


def test_a_sequence_decodes_the_same_alone_and_in_a_batch_of_eight():
    model = tiny("llama")
    engine = Engine(model, max_batch=8)
    prompts = [list((np.arange(n) * (3 + n) + n) % 320) for n in (5, 17, 1, 33, 9, 2, 12, 26)]
    alone = [engine.generate(p, max_new_tokens=20, stop_token_ids=[]).tokens for p in prompts]
    batched = [g.tokens for g in engine.generate_batch(prompts, max_new_tokens=20, stop_token_ids=[])]
    assert batched == alone
    # more prompts than the batch holds: they join as others finish
    engine = Engine(model, max_batch=3)
    assert [g.tokens for g in engine.generate_batch(prompts, max_new_tokens=20, stop_token_ids=[])] == alone


def test_a_request_joining_a_running_batch_gets_its_own_tokens():
    model = tiny("llama")
    engine = exact(model)
    p1, p2 = [1, 2, 3, 4, 5], [9, 8, 7]
    alone1 = engine.generate(p1, max_new_tokens=12, stop_token_ids=[]).tokens
    alone2 = engine.generate(p2, max_new_tokens=12, stop_token_ids=[]).tokens
    r1 = engine.submit(p1, max_new_tokens=12, stop_token_ids=[])
    for _ in range(4):
        engine.step()
    r2 = engine.submit(p2, max_new_tokens=12, stop_token_ids=[])
    while r1.finish_reason is None or r2.finish_reason is None:
        engine.step()
    assert r1.history == alone1 and r2.history == alone2
    assert engine._native.used_blocks == 0  # finished sequences gave their cache back


def test_stop_tokens_end_a_generation_and_are_not_returned():
    model = tiny("llama")
    engine = exact(model)
    free = engine.generate([1, 2, 3], max_new_tokens=10, stop_token_ids=[])
    stop = free.tokens[3]
    got = engine.generate([1, 2, 3], max_new_tokens=10, stop_token_ids=[stop])
    assert got.finish_reason == "stop"
    assert got.tokens == free.tokens[: free.tokens.index(stop)]


def test_stream_yields_the_text_generate_returns():
    import slmops

    model, tok = slmops.zoo.load("kjv-teacher")
    engine = Engine((model, tok))
    whole = engine.generate("In the beginning", max_new_tokens=30, stop_token_ids=[]).text
    pieces = list(engine.stream("In the beginning", max_new_tokens=30, stop_token_ids=[]))
    assert len(pieces) > 1
    assert "".join(pieces) == whole


# -- sampling -------------------------------------------------------------------------
def reference_penalties(logits, prompt, generated, rep, presence, frequency):
    z = logits.astype(np.float32).copy()
    seen = set(prompt) | set(generated)
    for t in seen:
        if rep != 1.0:
            z[t] = z[t] / rep if z[t] > 0 else z[t] * rep
    for t in set(generated):
        z[t] -= presence + frequency * generated.count(t)
    return z


def test_sampler_penalties_equal_their_definitions():
    from slmops import _C

    rng = np.random.default_rng(0)
    logits = rng.standard_normal(50).astype(np.float32) * 3
    prompt, generated = [1, 2, 3, 3], [3, 7, 7, 7, 9]
    hist = np.array(prompt + generated, np.int32)
    ref = reference_penalties(logits, prompt, generated, 1.3, 0.5, 0.25)
    z = logits.copy()
    s = _C.Sampler(temperature=0.0, repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.25)
    got = s.sample(z, hist, len(prompt))
    np.testing.assert_allclose(z, ref, rtol=1e-6)
    assert got == int(np.argmax(ref))


def test_seeded_sampling_repeats_and_its_draws_follow_the_distribution():
    from slmops import _C

    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    hist = np.zeros(0, np.int32)

    def draws(seed, n=4000, **kw):
        s = _C.Sampler(temperature=1.0, seed=seed, **kw)
        return [s.sample(logits.copy(), hist, 0) for _ in range(n)]

    a = draws(7)
    assert a == draws(7)
    assert a != draws(8)
    freq = np.bincount(a, minlength=4) / len(a)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)  # 4000 draws: sd <= 0.008
    assert set(draws(1, 500, top_k=2)) == {0, 1}
    assert set(draws(1, 500, top_p=0.7)) == {0, 1}  # 0.5 < 0.7 <= 0.8
    assert set(draws(1, 500, min_p=0.35)) == {0, 1}  # p >= 0.35 x 0.5
    freq = np.bincount(draws(3, 4000, top_k=2), minlength=4) / 4000
    np.testing.assert_allclose(freq[:2], [0.625, 0.375], atol=0.03)  # renormalised over the two kept


def test_greedy_picks_numpys_argmax_with_ties_nan_and_infinities():
    from slmops import _C

    rng = np.random.default_rng(5)
    hist = np.zeros(0, np.int32)
    greedy = _C.Sampler()
    for vocab in (1, 15, 1024, 49152, 50001):
        z = rng.standard_normal(vocab).astype(np.float32)
        z[rng.integers(0, vocab, max(1, vocab // 100))] = np.nan
        z[rng.integers(0, vocab, 3)] = -np.inf
        if vocab > 1:  # the maximum twice: the lower id wins
            top = np.nanmax(z) + 1.0
            z[[vocab - 1, vocab // 2]] = top
        assert greedy.sample(z.copy(), hist, 0) == int(np.nanargmax(z))
    assert greedy.sample(np.full(3000, np.nan, np.float32), hist, 0) == 0
    assert greedy.sample(np.full(3000, -np.inf, np.float32), hist, 0) == 0


def test_a_batch_of_rows_samples_as_each_row_alone():
    from slmops import _C

    rng = np.random.default_rng(9)
    logits = (rng.standard_normal((6, 3000)) * 2).astype(np.float32)
    hists = [rng.integers(0, 3000, n).astype(np.int32) for n in (1, 5, 9, 2, 30, 4)]
    options = [
        dict(),
        dict(temperature=0.8, seed=1),
        dict(temperature=1.0, top_k=20, seed=2),
        dict(temperature=0.7, top_p=0.5, repetition_penalty=1.2, seed=3),
        dict(temperature=1.2, min_p=0.05, presence_penalty=0.3, frequency_penalty=0.2, seed=4),
        dict(repetition_penalty=1.5),
    ]
    n_prompts = [len(h) // 2 for h in hists]
    alone = [
        _C.Sampler(**o).sample(row.copy(), h, n)
        for o, row, h, n in zip(options, logits, hists, n_prompts, strict=True)
    ]
    together = _C.sample_rows([_C.Sampler(**o) for o in options], logits.copy(), hists, n_prompts)
    assert together.tolist() == alone
    with pytest.raises(ValueError, match="one entry per logits row"):
        _C.sample_rows([_C.Sampler()], logits.copy(), hists, [0] * 6)


def test_text_decoder_pieces_join_to_the_whole_decode():
    from slmops.engine import TextDecoder

    tok = Engine("kjv-teacher").tokenizer
    text = "And God said, Let there be light: and there was light. naïve café — 東京 🙂 end"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    for step in (1, 2, 5):
        dec = TextDecoder(tok)
        pieces = [dec.push(ids[i : i + step]) for i in range(0, len(ids), step)]
        assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)
        assert not any("\ufffd" in p for p in pieces)


def test_stop_strings_show_exactly_the_text_before_the_first_stop():
    from slmops.engine import StopStrings

    rng = np.random.default_rng(0)
    text = "In the beginning God created the heaven and the earth."
    for stops in (["God"], ["the earth", "heaven"], ["nothing here"], ["n", "beginning"]):
        hits = [text.find(s) for s in stops if s in text]
        want = text[: min(hits)] if hits else text
        for _ in range(20):
            cuts = sorted(rng.choice(np.arange(1, len(text)), size=6, replace=False))
            parts = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
            matcher, shown, stopped = StopStrings(stops), [], False
            for part in parts:
                piece, stopped = matcher.feed(part)
                shown.append(piece)
                if stopped:
                    break
            if not stopped:
                shown.append(matcher.flush())
            assert "".join(shown) == want and stopped == bool(hits)


def test_requested_logprobs_are_the_raw_log_softmax_before_penalties():
    engine = exact(tiny("llama"))
    prompt = [5, 9, 2, 7]
    sampling = SamplingOptions(temperature=0.8, repetition_penalty=1.5, seed=3)
    req = engine.submit(prompt, max_new_tokens=6, stop_token_ids=[], sampling=sampling, logprobs=4)
    while req.finish_reason is None:
        engine.step()
    z = engine.logits(prompt + req.history).astype(np.float64)[len(prompt) - 1 : -1]
    lsm = z - (z.max(-1, keepdims=True) + np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)))
    assert [e.token for e in req.logprobs_out] == req.history
    for e, row in zip(req.logprobs_out, lsm, strict=True):
        assert abs(e.logprob - row[e.token]) < 1e-4
        top = np.argsort(-row, kind="stable")[:4]
        assert [t for t, _ in e.top] == top.tolist()
        np.testing.assert_allclose([lp for _, lp in e.top], row[top], atol=1e-4)
    with pytest.raises(ValueError, match="logprobs"):
        engine.submit(prompt, logprobs=21)
    assert engine.submit(prompt, max_new_tokens=1).logprobs_out == []


def test_engine_sampling_is_reproducible_by_seed():
    engine = Engine(tiny("llama"))
    opts = dict(max_new_tokens=20, stop_token_ids=[])
    a = engine.generate([1, 2, 3], sampling=SamplingOptions(temperature=1.5, seed=11), **opts).tokens
    b = engine.generate([1, 2, 3], sampling=SamplingOptions(temperature=1.5, seed=11), **opts).tokens
    c = engine.generate([1, 2, 3], sampling=SamplingOptions(temperature=1.5, seed=12), **opts).tokens
    assert a == b and a != c


@pytest.mark.parametrize(
    "options, match",
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ],
)
def test_bad_sampling_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        SamplingOptions(**options).sampler()


# -- bad input ------------------------------------------------------------------------
def test_unsupported_architectures_and_rope_scaling_are_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(ValueError, match="gpt2"):
        Engine(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50)))
    with pytest.raises(ValueError, match="dynamic"):
        Engine(tiny("llama", rope_scaling={"rope_type": "dynamic", "factor": 2.0}))


def test_bad_prompts_and_context_overflow_are_clear_errors():
    engine = Engine(tiny("llama"), max_context=32)
    with pytest.raises(ValueError, match="non-empty"):
        engine.generate([])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([1, 320])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([-1])
    with pytest.raises(ValueError, match="context holds 32"):
        engine.generate(list(range(40)))
    with pytest.raises(ValueError, match="needs a tokenizer"):
        engine.generate("text without a tokenizer")
    # a generation that reaches the context stops there
    got = engine.generate(list(range(1, 29)), max_new_tokens=50, stop_token_ids=[])
    assert got.finish_reason == "length" and len(got.tokens) == 32 - 28
    with pytest.raises(ValueError, match="outside the vocabulary"):
        seq = engine._native.add_sequence()
        engine._native.forward([(seq, np.array([5, 999], np.int32), False)])
    assert engine._native.sequence_length(seq) == 0  # the failed step changed nothing
    with pytest.raises(ValueError, match="unknown sequence"):
        engine._native.forward([(12345, np.array([5], np.int32), False)])


def test_a_full_cache_is_an_error_that_changes_nothing():
    model = tiny("llama")
    block = 2 * 2 * 2 * 16 * 16 * 4  # layers x (k, v) x kv heads x block tokens x head_dim x 4 bytes
    engine = exact(model, kv_memory=3 * block, max_context=128)
    with pytest.raises(CacheFullError, match="raise kv_memory"):
        engine.generate(list(range(1, 40)), max_new_tokens=20)
    native = engine._native
    a, b = native.add_sequence(), native.add_sequence()
    native.forward([(a, np.arange(1, 33, dtype=np.int32), False)])  # 2 blocks
    with pytest.raises(CacheFullError):
        native.forward([(b, np.arange(1, 33, dtype=np.int32), False)])  # 2 more: 1 free
    assert native.sequence_length(b) == 0 and native.free_blocks == 1
    native.remove_sequence(a)
    native.forward([(b, np.arange(1, 33, dtype=np.int32), False)])
    # queued requests wait for room instead of failing
    engine = exact(model, kv_memory=3 * block, max_context=128)
    outs = engine.generate_batch([[1, 2, 3]] * 4, max_new_tokens=30, stop_token_ids=[])  # 3 blocks each
    assert all(len(g.tokens) == 30 for g in outs)


def test_a_linear_of_the_wrong_shape_is_named():
    model = tiny("llama")
    model.model.layers[1].mlp.up_proj = nn.Linear(64, 100, bias=False)
    with pytest.raises(ValueError, match="layer 1 up_proj"):
        Engine(model)


def test_speed_is_measured_on_the_engine_by_default_and_on_torch_when_asked():
    from slmops.evaluate import evaluate

    model = tiny("llama")
    fast = evaluate(model, metrics=["speed"], prompt_tokens=16, decode_tokens=8, repeats=2)["speed"]
    slow = evaluate(model, metrics=["speed"], prompt_tokens=16, decode_tokens=8, repeats=2, backend="torch")[
        "speed"
    ]
    assert fast["backend"] == "engine" and slow["backend"] == "torch"
    for s in (fast, slow):
        assert s["decode_tokens_per_s"] > 0 and s["prefill_tokens_per_s"] > 0
    with pytest.raises(ValueError, match="backend"):
        evaluate(model, metrics=["speed"], backend="gpu")


def test_a_model_that_ran_can_be_copied():
    # The packed kernels' views are not copied: the copy packs its own buffers.
    model = tiny("llama")
    quantize_model(model, "rtn", format="q4_0", progress=False)
    ids = np.arange(1, 9)
    ref = exact(model).logits(ids)
    twin = copy.deepcopy(model)
    close(exact(twin).logits(ids), ref, 0.0)


@pytest.mark.parametrize("flag, head_format", [([], "auto"), (["--head-format", "none"], None),
                                                (["--head-format", "q4_0"], "q4_0")])  # fmt: skip
def test_generate_cli_passes_the_head_format_rule_to_the_engine(monkeypatch, capsys, flag, head_format):
    import slmops.engine
    from slmops.cli import main as cli_main

    seen = []

    class Recorder(Engine):
        def __init__(self, model, **options):
            seen.append(options["head_format"])
            super().__init__(model, **options)

    monkeypatch.setattr(slmops.engine, "Engine", Recorder)
    args = ["generate", "-m", "kjv-teacher", "-p", "In the beginning", "--format", "int4"]
    assert cli_main([*args, "--max-new-tokens", "4", *flag]) == 0
    assert seen == [head_format]
    assert capsys.readouterr().out.strip()
