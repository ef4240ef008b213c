import numpy as np
import pytest
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
