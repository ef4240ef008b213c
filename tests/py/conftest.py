import numpy as np
import pytest
import torch
from slmops import _C

ISAS = _C.available_cpu_isas()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def gaussian(rng, shape, std=1.0, dtype=np.float32):
    return (rng.standard_normal(shape) * std).astype(dtype)


def normalized_mse(w, w_hat) -> float:
    w = np.asarray(w, dtype=np.float64)
    return float(np.mean((w - np.asarray(w_hat, dtype=np.float64)) ** 2) / np.mean(w**2))


CALIBRATION_TEXT = (
    "In the beginning God created the heaven and the earth. And the earth was without form, and void.\n"
)


@pytest.fixture(scope="session")
def tiny_llama():
    """A randomly initialized 2-layer Llama (hidden 64) and a tokenizer trained on
    CALIBRATION_TEXT: the model the calibrated-compression tests run on. Copy before changing."""
    import slmops
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = slmops.zoo.train_tokenizer([CALIBRATION_TEXT] * 20, vocab_size=300)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval(), tok


def genai_greedy_tokens(gm, ids, new):
    """The tokens onnxruntime-genai's model ``gm`` generates greedily after the prompt ``ids``."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(gm)
    params.set_search_options(max_length=len(ids) + new, do_sample=False)
    gen = og.Generator(gm, params)
    gen.append_tokens(np.array([ids], dtype=np.int32))
    got = []
    while not gen.is_done():
        gen.generate_next_token()
        got.append(int(gen.get_next_tokens()[0]))
    return got
