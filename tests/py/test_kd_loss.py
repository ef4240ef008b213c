"""The distillation losses against a plain PyTorch float64 implementation (forward and
autograd gradients), against central finite differences on a tiny case, and the
gradient-accumulation rule; the torch modules' autograd, the fused linear loss, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import slmops
import torch
import torch.nn.functional as F
from slmops.nn import FusedLinearKDLoss, KDLoss, TeacherHidden, TeacherTopK
from slmops.ops import fused_linear_kd_loss, kd_loss


def reference(
    student,
    teacher,
    *,
    divergence="forward_kl",
    temperature=1.0,
    beta=0.5,
    reduction="batchmean",
    ignore_index=-100,
    labels=None,
    hard_weight=0.0,
    scale_t2=True,
    num_tokens=None,
):
    """(loss, d loss / d student) in float64 autograd, written from the definitions."""
    s = student.detach().double().requires_grad_()
    T = temperature
    if isinstance(teacher, TeacherTopK):
        lq_full = F.log_softmax(s / T, -1)
        ids = teacher.indices.long()
        lq_ids = lq_full.gather(-1, ids)
        lq_tail = torch.log(torch.clamp(1 - lq_ids.exp().sum(-1, keepdim=True), min=1e-30))
        lq = torch.cat([lq_ids, lq_tail], -1)
        raw = teacher.logprobs.double()
        raw_tail = torch.log(torch.clamp(1 - raw.exp().sum(-1, keepdim=True), min=1e-30))
        lp = F.log_softmax(torch.cat([raw, raw_tail], -1) / T, -1)
        n = s.shape[-1]
    else:
        n = min(s.shape[-1], teacher.shape[-1])
        lq = F.log_softmax(s[..., :n] / T, -1)
        lp = F.log_softmax(teacher[..., :n].double() / T, -1)
    p, q = lp.exp(), lq.exp()
    if divergence == "jsd" and beta == 0.0:
        divergence = "forward_kl"
    if divergence == "jsd" and beta == 1.0:
        divergence = "reverse_kl"
    if divergence == "forward_kl":
        soft = torch.where(p > 0, p * (lp - lq), torch.zeros_like(p)).sum(-1)
    elif divergence == "reverse_kl":
        soft = (q * (lq - lp)).sum(-1)
    else:
        lm = torch.log(beta * p + (1 - beta) * q)
        teacher_part = torch.where(p > 0, p * (lp - lm), torch.zeros_like(p))
        soft = (beta * teacher_part + (1 - beta) * q * (lq - lm)).sum(-1)
    rows = (1 - hard_weight) * (T * T if scale_t2 else 1.0) * soft
    if labels is not None:
        keep = labels != ignore_index
        if hard_weight > 0:
            targets = torch.where(keep, labels, 0).unsqueeze(-1)
            ce = -F.log_softmax(s[..., :n], -1).gather(-1, targets).squeeze(-1)
            rows = rows + hard_weight * ce
        rows = torch.where(keep, rows, torch.zeros_like(rows))
        count = int(keep.sum())
    else:
        count = rows.numel()
    if reduction == "none":
        loss = rows
        rows.sum().backward()
    else:
        loss = rows.sum() / (
            (num_tokens if num_tokens is not None else max(count, 1)) if reduction == "batchmean" else 1
        )
        loss.backward()
    return loss.detach(), s.grad


def top_k(teacher_logits, k):
    lp = F.log_softmax(teacher_logits.double(), -1)
    vals, ids = lp.topk(k, -1)
    return TeacherTopK(ids, vals.float())


def make(rows_shape, V, Vt=None, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(*rows_shape, V, generator=g) * scale
    t = torch.randn(*rows_shape, Vt or V, generator=g) * scale
    labels = torch.randint(0, min(V, Vt or V), rows_shape, generator=g)
    labels[..., ::4] = -100
    return s, t, labels


def assert_close(ours, ref, rtol=1e-5, atol=1e-6, what=""):
    ours = ours.double() if isinstance(ours, torch.Tensor) else torch.tensor(float(ours), dtype=torch.float64)
    torch.testing.assert_close(ours, ref.double(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


DIVERGENCES = [
    ("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.2), ("jsd", 0.0), ("jsd", 1.0)
]  # fmt: skip


@pytest.mark.parametrize("divergence,beta", DIVERGENCES)
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
@pytest.mark.parametrize("temperature,hard_weight", [(1.0, 0.0), (2.0, 0.0), (1.0, 0.3), (0.7, 0.5)])
def test_matches_float64_torch(divergence, beta, reduction, temperature, hard_weight):
    s, t, labels = make((3, 7), 131)
    kw = dict(divergence=divergence, beta=beta, reduction=reduction, temperature=temperature)
    kw["hard_weight"] = hard_weight
    loss, grad = kd_loss(s, t, labels=labels, return_grad=True, **kw)
    ref_loss, ref_grad = reference(s, t, labels=labels, **kw)
    assert_close(loss, ref_loss, what="loss")
    assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7, what="grad")


@pytest.mark.parametrize("divergence,beta", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_top_k_teacher_with_tail_bucket(divergence, beta, temperature):
    s, t, labels = make((5, 3), 97, seed=1)
    teacher = top_k(t, 12)
    kw = dict(divergence=divergence, beta=beta, temperature=temperature, hard_weight=0.2)
    loss, grad = kd_loss(s, teacher, labels=labels, return_grad=True, **kw)
    ref_loss, ref_grad = reference(s, teacher, labels=labels, **kw)
    assert_close(loss, ref_loss, what="loss")
    assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7, what="grad")
    assert torch.all(grad[labels != -100] != 0)  # dense: every id of the student gets gradient


def test_top_k_covering_the_mass_equals_dense_forward_kl():
    # A teacher that puts all its mass on k ids: the top-k loss is the dense loss.
    s, t, _ = make((4,), 40, seed=2)
    t[:, 10:] = -float("inf")
    dense, g_dense = kd_loss(s, t, return_grad=True)
    sparse, g_sparse = kd_loss(s, top_k(t[:, :10].clone(), 10), return_grad=True)
    assert_close(sparse, dense.double(), rtol=1e-4, what="loss")
    assert_close(g_sparse, g_dense.double(), rtol=1e-3, atol=1e-6, what="grad")


@pytest.mark.parametrize("V,Vt", [(120, 128), (128, 120)])
@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_vocabulary_mismatch_compares_the_common_ids(V, Vt, divergence):
    s, t, labels = make((6,), V, Vt, seed=3)
    loss, grad = kd_loss(s, t, labels=labels, divergence=divergence, hard_weight=0.1, return_grad=True)
    ref_loss, ref_grad = reference(s, t, labels=labels, divergence=divergence, hard_weight=0.1)
    assert_close(loss, ref_loss, what="loss")
    assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7, what="grad")
    assert torch.all(grad[:, min(V, Vt) :] == 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_half_precision_inputs_accumulate_in_float32(dtype, divergence):
    s, t, labels = make((4, 5), 300, seed=4)
    s, t = s.to(dtype), t.to(dtype)
    loss, grad = kd_loss(s, t, labels=labels, divergence=divergence, temperature=2.0, return_grad=True)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    ref_loss, ref_grad = reference(s, t, labels=labels, divergence=divergence, temperature=2.0)
    # the same rounded inputs: only the fp32 arithmetic differs
    assert_close(loss, ref_loss, rtol=1e-5, what="loss")
    assert_close(grad, ref_grad, rtol=2e-2, atol=1e-4, what="grad")  # the gradient is rounded to the dtype


def test_large_vocabulary():
    s, t, labels = make((8,), 32000, seed=5, scale=4.0)
    for divergence in ("forward_kl", "reverse_kl", "jsd"):
        loss, grad = kd_loss(s, t, labels=labels, divergence=divergence, temperature=2.0, return_grad=True)
        ref_loss, ref_grad = reference(s, t, labels=labels, divergence=divergence, temperature=2.0)
        assert_close(loss, ref_loss, rtol=2e-5, what=divergence)
        assert_close(grad, ref_grad, rtol=1e-3, atol=1e-8, what=divergence)


@pytest.mark.parametrize("divergence,beta", DIVERGENCES)
def test_gradient_matches_finite_differences(divergence, beta):
    g = torch.Generator().manual_seed(6)
    s = torch.randn(3, 7, generator=g, dtype=torch.float64)
    t = torch.randn(3, 7, generator=g)
    labels = torch.tensor([2, -100, 5])
    kw = dict(divergence=divergence, beta=beta, temperature=1.7, hard_weight=0.25, labels=labels)
    kw["reduction"] = "sum"
    _, grad = kd_loss(s.float(), t, return_grad=True, **kw)
    eps = 1e-2
    numeric = torch.zeros_like(s)
    for i, j in itertools.product(range(3), range(7)):
        hi, lo = s.clone(), s.clone()
        hi[i, j] += eps
        lo[i, j] -= eps
        diff = float(kd_loss(hi.float(), t, **kw)) - float(kd_loss(lo.float(), t, **kw))
        numeric[i, j] = diff / (2 * eps)
    torch.testing.assert_close(grad.double(), numeric, rtol=2e-3, atol=2e-4)


def test_gradient_accumulation_equals_the_full_batch():
    s, t, labels = make((4, 6), 50, seed=7)
    loss_fn = KDLoss("jsd", temperature=2.0, hard_weight=0.3)
    full = s.clone().requires_grad_()
    loss_fn(full, t, labels).backward()
    micro = s.clone().requires_grad_()
    num_tokens = int((labels != -100).sum())
    for part in (slice(0, 1), slice(1, 4)):  # uneven micro-batches with different token counts
        loss_fn(micro[part], t[part], labels[part], num_tokens=num_tokens).backward()
    torch.testing.assert_close(micro.grad, full.grad, rtol=1e-5, atol=1e-8)


def test_module_autograd_scales_by_the_incoming_gradient():
    s, t, labels = make((2, 5), 64, seed=8)
    x = s.clone().requires_grad_()
    (3.0 * KDLoss("reverse_kl", temperature=1.5)(x, t, labels)).backward()
    _, ref_grad = reference(s, t, labels=labels, divergence="reverse_kl", temperature=1.5)
    assert_close(x.grad, 3.0 * ref_grad, rtol=1e-4, atol=1e-7)
    y = s.clone().requires_grad_()
    w = torch.rand(2, 5)
    (KDLoss(reduction="none")(y, t, labels) * w).sum().backward()
    s64 = s.double().requires_grad_()
    lq, lp = F.log_softmax(s64, -1), F.log_softmax(t.double(), -1)
    rows = torch.where(labels != -100, (lp.exp() * (lp - lq)).sum(-1), 0.0)
    (rows * w.double()).sum().backward()
    assert_close(y.grad, s64.grad, rtol=1e-4, atol=1e-7)


def test_backward_twice_is_refused():
    s, t, _ = make((2,), 16, seed=9)
    x = s.clone().requires_grad_()
    loss = KDLoss()(x, t)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()


def test_numpy_inputs():
    s, t, labels = make((3,), 20, seed=10)
    loss, grad = kd_loss(s.numpy(), t.numpy(), labels=labels.numpy(), return_grad=True, divergence="jsd")
    ref_loss, ref_grad = reference(s, t, labels=labels, divergence="jsd")
    assert isinstance(grad, np.ndarray)
    assert abs(float(loss) - float(ref_loss)) < 1e-5
    np.testing.assert_allclose(grad, ref_grad.numpy(), rtol=1e-4, atol=1e-7)


# ---- fused linear ----------------------------------------------------------------------


def fused_reference(hidden, weight, teacher_logits, **kw):
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    logits = h @ w.T
    loss, g = reference(logits, teacher_logits, **kw)
    return loss, g @ w.detach(), g.reshape(-1, g.shape[-1]).T @ h.detach().reshape(-1, h.shape[-1])


@pytest.mark.parametrize("teacher_form", ["logits", "top-k", "hidden"])
@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_fused_linear_matches_float64_torch(teacher_form, divergence):
    g = torch.Generator().manual_seed(11)
    hidden, weight = torch.randn(3, 11, 32, generator=g), torch.randn(150, 32, generator=g) * 0.3
    t_hidden, t_head = torch.randn(3, 11, 24, generator=g), torch.randn(150, 24, generator=g) * 0.4
    t_logits = (t_hidden.double() @ t_head.double().T).float()
    labels = torch.randint(0, 150, (3, 11), generator=g)
    labels[:, ::5] = -100
    teacher = {"logits": t_logits, "top-k": top_k(t_logits, 20), "hidden": TeacherHidden(t_hidden, t_head)}
    kw = dict(divergence=divergence, temperature=2.0, hard_weight=0.25, labels=labels)
    ref_teacher = teacher["top-k"] if teacher_form == "top-k" else t_logits
    ref_loss, ref_dh, ref_dw = fused_reference(hidden, weight, ref_teacher, **kw)
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = FusedLinearKDLoss(divergence, temperature=2.0, hard_weight=0.25, chunk_rows=7)(
        h, w, teacher[teacher_form], labels
    )
    loss.backward()
    assert_close(loss, ref_loss, rtol=1e-5, what="loss")
    assert_close(h.grad, ref_dh, rtol=1e-4, atol=1e-6, what="d_hidden")
    assert_close(w.grad, ref_dw, rtol=1e-4, atol=1e-6, what="d_weight")


def test_fused_linear_frozen_head_and_bf16():
    g = torch.Generator().manual_seed(12)
    hidden = torch.randn(20, 16, generator=g).bfloat16()
    weight = (torch.randn(90, 16, generator=g) * 0.3).bfloat16()
    t_logits = torch.randn(20, 90, generator=g)
    h = hidden.clone().requires_grad_()
    FusedLinearKDLoss(temperature=1.5)(h, weight, t_logits).backward()  # the head is frozen
    assert h.grad.dtype == torch.bfloat16 and weight.grad is None
    _, ref_dh, _ = fused_reference(hidden, weight, t_logits, temperature=1.5)
    assert_close(h.grad, ref_dh, rtol=2e-2, atol=1e-4)
    loss, dh, dw = fused_linear_kd_loss(hidden, weight, t_logits, temperature=1.5)
    assert dh is None and dw is None and torch.isfinite(loss)


def test_no_teacher_is_plain_cross_entropy():
    g = torch.Generator().manual_seed(15)
    hidden, weight = torch.randn(2, 9, 16, generator=g), torch.randn(120, 16, generator=g) * 0.3
    labels = torch.randint(0, 120, (2, 9), generator=g)
    labels[0, :3] = -100
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = FusedLinearKDLoss(hard_weight=1.0, chunk_rows=5)(h, w, None, labels)
    loss.backward()
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    ref = F.cross_entropy((h64 @ w64.T).reshape(-1, 120), labels.reshape(-1), ignore_index=-100)
    ref.backward()
    assert_close(loss, ref, rtol=1e-5, what="loss")
    assert_close(h.grad, h64.grad, rtol=1e-4, atol=1e-7, what="d_hidden")
    assert_close(w.grad, w64.grad, rtol=1e-4, atol=1e-7, what="d_weight")
    logits = (hidden @ weight.T).requires_grad_()
    assert_close(kd_loss(logits, None, labels=labels, hard_weight=1.0), ref, rtol=1e-5, what="kd_loss")
    with pytest.raises(ValueError, match="hard_weight=1.0"):
        fused_linear_kd_loss(hidden, weight, None, labels=labels, hard_weight=0.5)


def test_fused_chunk_size_does_not_change_the_result():
    g = torch.Generator().manual_seed(13)
    hidden, weight, t = torch.randn(50, 8, generator=g), torch.randn(70, 8, generator=g), torch.randn(50, 70)
    results = [
        fused_linear_kd_loss(hidden, weight, t, grad_hidden=True, grad_weight=True, chunk_rows=chunk)
        for chunk in (1, 16, 0)
    ]
    for loss, dh, dw in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(dh, results[0][1], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(dw, results[0][2], rtol=1e-4, atol=1e-6)


# ---- errors ------------------------------------------------------------------------------


def test_errors_say_what_is_wrong():
    s, t, labels = make((2, 3), 10, seed=14)
    with pytest.raises(ValueError, match="divergence must be one of"):
        kd_loss(s, t, divergence="kl")
    with pytest.raises(ValueError, match="teacher_logits must have shape"):
        kd_loss(s, t[0])
    with pytest.raises(ValueError, match="needs labels"):
        kd_loss(s, t, hard_weight=0.5)
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(temperature=0.0)
    bad_ids = torch.zeros(2, 3, 2, dtype=torch.int64)  # the same id twice
    with pytest.raises(ValueError, match="repeat an id"):
        kd_loss(s, TeacherTopK(bad_ids, torch.full((2, 3, 2), -3.0)))
    ok_ids = torch.tensor([0, 1]).expand(2, 3, 2)
    with pytest.raises(ValueError, match="not logits"):
        kd_loss(s, TeacherTopK(ok_ids, torch.zeros(2, 3, 2)))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        kd_loss(s, t, labels=torch.full((2, 3), 10), hard_weight=0.5)
    with pytest.raises(TypeError, match="needs fused_linear_kd_loss"):
        kd_loss(s, TeacherHidden(torch.zeros(2, 3, 4), torch.zeros(10, 4)))
    with pytest.raises(ValueError, match="student_head_weight must be"):
        fused_linear_kd_loss(torch.zeros(4, 8), torch.zeros(10, 6), torch.zeros(4, 10))
    with pytest.raises(ValueError, match="reduction"):
        FusedLinearKDLoss(reduction="none")


def test_public_names():
    assert slmops.ops.kd_loss is kd_loss and slmops.nn.KDLoss is KDLoss
