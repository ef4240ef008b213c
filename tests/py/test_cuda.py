"""The CUDA kernels through slmops.ops, against torch on the same GPU in float64.

Every test here needs a CUDA GPU and skips without one (CI has none); the kernels'
element math, lane loops and row passes are also tested on the CPU in
tests/cpp/test_cuda_host.cpp. Run on a GPU machine with ``python -m pytest tests/py/test_cuda.py``.
"""

from __future__ import annotations

import pytest
import slmops
import torch
from slmops.ops import fused_linear_kd_loss, kd_loss, qmatmul, quantize
from slmops.ops.kd import TeacherHidden

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and slmops.build_info()["cuda"]),
    reason="no CUDA GPU visible (or built without CUDA)",
)

DEV = "cuda"
TOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 2e-2}


CASES = [
    ("int4", {"group_size": 32}),
    ("int4", {"group_size": 128, "symmetric": False}),
    ("int4", {"group_size": 16}),
    ("nf4", {"group_size": 64}),
    ("int8", {}),
    ("int8", {"group_size": 32}),
    ("q4_k", {}),
    ("q6_k", {}),
]


@pytest.mark.parametrize("fmt,opts", CASES, ids=[f"{f}-{o}" for f, o in CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m", [1, 3, 8, 16, 64, 300])
def test_qmatmul_matches_dequantized_matmul(fmt, opts, dtype, m):
    n, k = 96, 512
    qw = quantize(torch.randn(n, k, generator=torch.Generator().manual_seed(m)) * 0.05, fmt, **opts).to(DEV)
    x = torch.randn(m, k, device=DEV).to(dtype)
    bias = torch.randn(n, device=DEV)
    want = x.double() @ qw.dequantize("float32").double().T + bias.double()
    y = qmatmul(x, qw, bias=bias)
    assert y.dtype == dtype and y.device.type == "cuda"
    scale = want.abs().max().item()
    assert (y.double() - want).abs().max().item() <= TOL[dtype] * scale * 4


@pytest.mark.parametrize("backend", ["gemv", "tensor_core", "dequantize_gemm"])
def test_every_path_agrees_on_int4(backend):
    n, k, m = 200, 4096 + 64, 8  # tails: N not a multiple of the tiles
    qw = quantize(torch.randn(n, k) * 0.05, "int4", group_size=64, symmetric=False).to(DEV)
    x = torch.randn(m, k, device=DEV, dtype=torch.float16)
    want = x.double() @ qw.dequantize("float32").double().T
    y = qmatmul(x, qw, backend=backend)
    assert (y.double() - want).abs().max().item() <= 4e-3 * want.abs().max().item() * 4


def test_split_k_tensor_core_matches():
    qw = quantize(torch.randn(64, 8192) * 0.05, "nf4").to(DEV)
    x = torch.randn(16, 8192, device=DEV, dtype=torch.bfloat16)
    want = x.double() @ qw.dequantize("float32").double().T
    y = qmatmul(x, qw, backend="tensor_core")
    assert (y.double() - want).abs().max().item() <= 2e-2 * want.abs().max().item() * 4


def test_w8a8_matches_per_row_quantized_reference():
    n, k, m = 256, 1024, 512
    qw = quantize(torch.randn(n, k) * 0.05, "int8").to(DEV)
    x = torch.randn(m, k, device=DEV, dtype=torch.float16)
    xs = x.float().abs().amax(1, keepdim=True) / 127
    xq = torch.round(x.float() / xs).clamp(-127, 127)
    want = (xq.double() * xs.double()) @ qw.dequantize("float32").double().T
    y = qmatmul(x, qw, activation="int8_row")
    assert (y.double() - want).abs().max().item() <= 4e-3 * want.abs().max().item() * 4


def test_w8a8_refuses_grouped_weights():
    qw = quantize(torch.randn(8, 64), "int8", group_size=32).to(DEV)
    with pytest.raises(ValueError, match="one scale per row"):
        qmatmul(torch.randn(2, 64, device=DEV), qw, activation="int8_row")


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hard_weight", [0.0, 0.25])
def test_kd_loss_matches_the_cpu_kernels(divergence, dtype, hard_weight):
    rows, vocab = 37, 5000
    z = (torch.randn(rows, vocab) * 3).to(dtype)
    t = (torch.randn(rows, vocab - 100) * 3).to(dtype)  # a shorter teacher vocabulary
    labels = torch.randint(0, vocab - 100, (rows,))
    labels[3] = -100
    kw = dict(
        divergence=divergence, temperature=2.0, hard_weight=hard_weight, labels=labels, return_grad=True
    )
    want_loss, want_grad = kd_loss(z, t, **kw)
    loss, grad = kd_loss(z.to(DEV), t.to(DEV), **{**kw, "labels": labels.to(DEV)})
    assert abs(loss.item() - float(want_loss)) <= 1e-4 * (1 + abs(float(want_loss)))
    assert (grad.float().cpu() - want_grad.float()).abs().max().item() <= (
        1e-6 if dtype == torch.float32 else 1e-3
    )


def test_kd_loss_rejects_labels_outside_the_vocabulary():
    z = torch.randn(4, 50, device=DEV)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        kd_loss(z, z, hard_weight=0.5, labels=torch.tensor([1, 2, 60, 3], device=DEV))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_linear_kd_matches_eager(dtype):
    rows, hidden, vocab = 300, 64, 3000
    h = torch.randn(rows, hidden, device=DEV, dtype=dtype, requires_grad=True)
    w = (torch.randn(vocab, hidden, device=DEV) * 0.1).to(dtype).requires_grad_()
    th = torch.randn(rows, 48, device=DEV, dtype=dtype)
    tw = (torch.randn(vocab, 48, device=DEV) * 0.1).to(dtype)
    loss, dh, dw = fused_linear_kd_loss(
        h.detach(),
        w.detach(),
        TeacherHidden(th, tw),
        temperature=2.0,
        grad_hidden=True,
        grad_weight=True,
        chunk_rows=64,
    )
    p = torch.log_softmax((th.double() @ tw.double().T) / 2, -1)
    q = torch.log_softmax((h.double() @ w.double().T) / 2, -1)
    eager = (p.exp() * (p - q)).sum() * 4 / rows
    eager.backward()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert abs(loss.item() - eager.item()) <= tol * (1 + abs(eager.item()))
    assert (dh.double() - h.grad.double()).abs().max().item() <= tol * h.grad.abs().max().item() * 4
    assert (dw.double() - w.grad.double()).abs().max().item() <= tol * w.grad.abs().max().item() * 4
