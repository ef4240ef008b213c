"""slmops.ops' GPTQ math (hessian_accumulate, cholesky_inverse_upper, gptq_grid_params,
gptq_quantize, sparsegpt_prune) against float64 NumPy / torch transcriptions of what each
computes, on numpy arrays and torch tensors, and the errors of their arguments."""

import numpy as np
import pytest
import torch
from slmops.ops import (
    GPTQResult,
    SparseGPTResult,
    cholesky_inverse_upper,
    gptq_grid_params,
    gptq_quantize,
    hessian_accumulate,
    sparsegpt_prune,
)


def _inputs(rng, k=96, samples=400):
    """Correlated calibration inputs [samples, K] (float64): GPTQ's error spreading matters."""
    return rng.standard_normal((samples, k)) @ rng.standard_normal((k, k)) * 0.2


def _damped_hessian(x):
    h = (x.T @ x).astype(np.float32)
    h[np.diag_indices_from(h)] += np.float32(0.01 * np.mean(np.diag(h)))
    return h


def _nearly_all(got, want, rtol=1e-4, atol=1e-6, share=0.98):
    """float32 kernels against float64: a value at a rounding boundary may round the other way."""
    close = np.isclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)
    assert close.mean() > share, close.mean()


# ---- hessian_accumulate -------------------------------------------------------------------


@pytest.mark.parametrize("reference", [False, True])
def test_hessian_is_the_sum_of_outer_products_accumulated(rng, reference):
    x1 = rng.standard_normal((2, 70, 48))  # [..., K], float64: converted to float32
    x2 = rng.standard_normal((33, 48)).astype(np.float32)
    h = np.zeros((48, 48), np.float32)
    assert hessian_accumulate(h, x1, reference=reference) is h
    hessian_accumulate(h, x2, reference=reference)
    rows = np.concatenate([x1.reshape(-1, 48).astype(np.float32), x2]).astype(np.float64)
    want = rows.T @ rows
    np.testing.assert_allclose(h, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    np.testing.assert_array_equal(h, h.T)  # both triangles


def test_hessian_on_torch_tensors(rng):
    x = torch.from_numpy(rng.standard_normal((3, 40, 600))).to(torch.bfloat16)  # K > the 512 tile
    h = torch.zeros(600, 600)
    assert hessian_accumulate(h, x) is h
    rows = x.reshape(-1, 600).double()
    want = rows.T @ rows
    torch.testing.assert_close(h.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    hessian_accumulate(h, x[:, :0])  # no rows: nothing added
    torch.testing.assert_close(h.double(), want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_hessian_argument_errors(rng):
    x = rng.standard_normal((5, 8)).astype(np.float32)
    with pytest.raises(TypeError, match="hessian must be a numpy array or a torch tensor"):
        hessian_accumulate([[0.0]], x)
    with pytest.raises(TypeError, match="hessian must be float32 .it is updated in place., got float64"):
        hessian_accumulate(np.zeros((8, 8)), x)
    with pytest.raises(ValueError, match=r"hessian must be 2-D \[K, K\], got shape \(8,\)"):
        hessian_accumulate(np.zeros(8, np.float32), x)
    with pytest.raises(ValueError, match=r"hessian must be square \[K, K\], got shape \(8, 9\)"):
        hessian_accumulate(np.zeros((8, 9), np.float32), x)
    with pytest.raises(ValueError, match="hessian must be C-contiguous"):
        hessian_accumulate(np.asfortranarray(np.zeros((8, 8), np.float32)), x)
    readonly = np.zeros((8, 8), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="hessian is read-only"):
        hessian_accumulate(readonly, x)
    with pytest.raises(ValueError, match=r"x must be \[\.\.\., K=8\] .K of the hessian., got shape \(5, 7\)"):
        hessian_accumulate(np.zeros((8, 8), np.float32), x[:, :7])
    with pytest.raises(TypeError, match="x must be a float array"):
        hessian_accumulate(np.zeros((8, 8), np.float32), x.astype(np.int32))
    with pytest.raises(TypeError, match="x must be a numpy array or a torch tensor"):
        hessian_accumulate(np.zeros((8, 8), np.float32), x.tolist())


# ---- cholesky_inverse_upper ---------------------------------------------------------------


@pytest.mark.parametrize("reference", [False, True])
def test_inverse_upper_factor_against_numpy_linalg(rng, reference):
    h = _damped_hessian(_inputs(rng, k=150))  # K past one 128-column panel
    before = h.copy()
    u = cholesky_inverse_upper(h, reference=reference)
    np.testing.assert_array_equal(h, before)  # not in place: h is left as it is
    assert u.dtype == np.float32 and u is not h
    # The upper factor with a positive diagonal is unique: chol(inv(H)) transposed.
    want = np.linalg.cholesky(np.linalg.inv(h.astype(np.float64))).T
    np.testing.assert_allclose(u, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
    assert np.all(np.tril(u, -1) == 0) and np.all(np.diag(u) > 0)
    assert cholesky_inverse_upper(h, inplace=True, reference=reference) is h
    np.testing.assert_array_equal(h, u)


def test_inverse_upper_factor_on_torch_and_other_dtypes(rng):
    h = _damped_hessian(_inputs(rng, k=64))
    want = np.linalg.cholesky(np.linalg.inv(h.astype(np.float64))).T
    t = torch.from_numpy(h.copy())
    u = cholesky_inverse_upper(t)
    assert isinstance(u, torch.Tensor) and u.dtype == torch.float32 and u.data_ptr() != t.data_ptr()
    np.testing.assert_allclose(u.numpy(), want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
    np.testing.assert_array_equal(cholesky_inverse_upper(h.astype(np.float64)), u.numpy())  # converted
    assert cholesky_inverse_upper(t, inplace=True) is t
    np.testing.assert_array_equal(t.numpy(), u.numpy())


def test_inverse_upper_factor_argument_errors():
    with pytest.raises(ValueError, match="not positive definite"):
        cholesky_inverse_upper(-np.eye(8, dtype=np.float32))
    bad = np.eye(8, dtype=np.float32)
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="hessian holds NaN or Inf"):
        cholesky_inverse_upper(bad)
    with pytest.raises(ValueError, match=r"hessian must be square \[K, K\], got shape \(4, 8\)"):
        cholesky_inverse_upper(np.ones((4, 8), np.float32))
    with pytest.raises(ValueError, match=r"hessian is empty, shape \(0, 0\)"):
        cholesky_inverse_upper(np.ones((0, 0), np.float32))
    with pytest.raises(TypeError, match="hessian must be float32 .it is updated in place."):
        cholesky_inverse_upper(np.eye(8), inplace=True)
    with pytest.raises(TypeError, match="hessian must be a float array"):
        cholesky_inverse_upper(np.eye(8, dtype=np.int64))


# ---- gptq_grid_params ---------------------------------------------------------------------


def _numpy_grid(w, bits, symmetric, group):
    """The float32 grid of slmops' RTN conventions, group by group (GptqGrid in slmops/gptq.h)."""
    n, k = w.shape
    scales, zeros = [], []
    for j in range(0, k, group):
        g = w[:, j : j + group]
        if symmetric and bits == 8:
            scale = (np.abs(g).max(1) / np.float32(127)).astype(np.float32)
            zero = np.full(n, 128)
        elif symmetric:
            signed = g[np.arange(n), np.argmax(np.abs(g), axis=1)]
            scale = (signed / np.float32(-(2 ** (bits - 1)))).astype(np.float32)
            zero = np.full(n, 2 ** (bits - 1))
        else:
            mn, mx = np.minimum(g.min(1), 0), np.maximum(g.max(1), 0)
            scale = ((mx - mn) / np.float32(2**bits - 1)).astype(np.float32)
            inv = (np.float32(1) / scale).astype(np.float32)
            zero = np.clip(np.rint(-mn * inv), 0, 2**bits - 1)
        scales.append(scale)
        zeros.append(zero)
    return np.stack(scales, 1), np.stack(zeros, 1).astype(np.uint8)


@pytest.mark.parametrize(("bits", "symmetric", "group_size"), [(4, True, 32), (3, False, 64), (8, True, 0)])
def test_grid_params_against_numpy(rng, bits, symmetric, group_size):
    w = rng.standard_normal((12, 192)).astype(np.float32)
    scales, zeros = gptq_grid_params(w, bits=bits, symmetric=symmetric, group_size=group_size)
    want_scales, want_zeros = _numpy_grid(w, bits, symmetric, group_size or 192)
    np.testing.assert_array_equal(scales, want_scales)
    np.testing.assert_array_equal(zeros, want_zeros)
    ts, tz = gptq_grid_params(torch.from_numpy(w), bits=bits, symmetric=symmetric, group_size=group_size)
    assert isinstance(ts, torch.Tensor) and tz.dtype == torch.uint8
    np.testing.assert_array_equal(ts.numpy(), want_scales)
    np.testing.assert_array_equal(tz.numpy(), want_zeros)


def test_grid_params_argument_errors(rng):
    w = rng.standard_normal((4, 32)).astype(np.float32)
    with pytest.raises(ValueError, match=r"bits must be in \[2, 8\], got 9"):
        gptq_grid_params(w, bits=9)
    with pytest.raises(TypeError, match="bits must be an int, got float"):
        gptq_grid_params(w, bits=4.0)
    with pytest.raises(ValueError, match="group_size must be >= 0, got -1"):
        gptq_grid_params(w, bits=4, group_size=-1)
    with pytest.raises(ValueError, match=r"w must be 2-D \[N, K\], got shape \(32,\)"):
        gptq_grid_params(w[0], bits=4)
    with pytest.raises(TypeError, match="w must be a float array .*, got uint8"):
        gptq_grid_params(w.astype(np.uint8), bits=4)


# ---- gptq_quantize ------------------------------------------------------------------------


def _float64_gptq(w, u, bits, group):
    """Frantar et al., Algorithm 1 in float64 (no lazy batches), symmetric grid found on the
    error-updated weights as each group starts: the dequantized weights."""
    W, Q = w.astype(np.float64).copy(), np.zeros(w.shape)
    mid = 2 ** (bits - 1)
    for j in range(W.shape[1]):
        if j % group == 0:
            scale, _ = _numpy_grid(W[:, j : j + group].astype(np.float32), bits, True, group)
            scale = scale[:, 0]
            inv = np.where(scale != 0, np.float32(1) / np.where(scale != 0, scale, 1), 0).astype(np.float32)
        q = np.clip(np.rint(W[:, j].astype(np.float32) * inv) + mid, 0, 2**bits - 1)
        Q[:, j] = (q - mid) * scale
        err = (W[:, j] - Q[:, j]) / u[j, j]
        W[:, j:] -= np.outer(err, u[j, j:])
    return Q


@pytest.mark.parametrize("reference", [False, True])
def test_gptq_quantize_against_float64_gptq(rng, reference):
    x = _inputs(rng, k=160)
    h = np.zeros((160, 160), np.float32)
    hessian_accumulate(h, x)
    h[np.diag_indices_from(h)] += np.float32(0.01 * np.mean(np.diag(h)))
    w = rng.standard_normal((24, 160)).astype(np.float32)
    u = cholesky_inverse_upper(h)
    W = w.copy()
    out = gptq_quantize(W, u, bits=4, group_size=32, block=64, reference=reference)
    assert isinstance(out, GPTQResult) and out.codes.dtype == np.uint8 and out.scales.shape == (24, 5)
    # W ends as its quantized values: (code - zero) * scale of its group
    group = np.arange(160) // 32
    deq = (out.codes.astype(np.float32) - out.zeros[:, group]) * out.scales[:, group]
    np.testing.assert_array_equal(W, deq)
    _nearly_all(W, _float64_gptq(w, u.astype(np.float64), 4, 32))


def test_gptq_quantize_static_groups_and_torch(rng):
    x = _inputs(rng, k=128)
    h = _damped_hessian(x)
    w = rng.standard_normal((16, 128)).astype(np.float32)
    u = cholesky_inverse_upper(h)
    scales, zeros = gptq_grid_params(w, bits=4, group_size=32)
    col_group = np.arange(128) // 32  # int64: converted
    W = w.copy()
    out = gptq_quantize(W, u, bits=4, group_size=32, col_group=col_group, scales=scales, zeros=zeros)
    assert out.scales is scales and out.zeros is zeros  # the fixed grid, returned as given
    np.testing.assert_array_equal(scales, gptq_grid_params(w, bits=4, group_size=32)[0])
    np.testing.assert_array_equal(
        W, (out.codes.astype(np.float32) - zeros[:, col_group]) * scales[:, col_group]
    )
    Wt = torch.from_numpy(w.copy())
    tout = gptq_quantize(Wt, torch.from_numpy(u), bits=4, group_size=32)
    nout = gptq_quantize(w.copy(), u, bits=4, group_size=32)
    assert isinstance(tout.codes, torch.Tensor)
    for a, b in zip(tout, nout, strict=True):
        np.testing.assert_array_equal(a.numpy(), b)


def test_gptq_quantize_argument_errors(rng):
    w = rng.standard_normal((4, 32)).astype(np.float32)
    u = np.eye(32, dtype=np.float32)
    with pytest.raises(TypeError, match="w must be float32 .it is updated in place., got float64"):
        gptq_quantize(w.astype(np.float64), u, bits=4, group_size=16)
    with pytest.raises(ValueError, match="w must be C-contiguous"):
        gptq_quantize(np.asfortranarray(w), u, bits=4, group_size=16)
    with pytest.raises(ValueError, match=r"u must be \[32, 32\] .* got shape \(16, 16\)"):
        gptq_quantize(w, u[:16, :16], bits=4, group_size=16)
    with pytest.raises(ValueError, match=r"bits must be in \[2, 8\], got 1"):
        gptq_quantize(w, u, bits=1, group_size=16)
    with pytest.raises(ValueError, match="block must be >= 1, got 0"):
        gptq_quantize(w, u, bits=4, group_size=16, block=0)
    with pytest.raises(ValueError, match="group_size 0 .one group per row. needs col_group"):
        gptq_quantize(w, u, bits=8, group_size=0)
    with pytest.raises(ValueError, match="scales and zeros are outputs without col_group"):
        gptq_quantize(w, u, bits=4, group_size=16, scales=np.ones((4, 2), np.float32))
    groups = np.arange(32) // 16
    with pytest.raises(ValueError, match="col_group fixes the grid beforehand"):
        gptq_quantize(w, u, bits=4, group_size=16, col_group=groups)
    scales, zeros = np.ones((4, 2), np.float32), np.full((4, 2), 8, np.uint8)
    with pytest.raises(ValueError, match=r"col_group must be \[K=32\]"):
        gptq_quantize(w, u, bits=4, group_size=16, col_group=groups[:16], scales=scales, zeros=zeros)
    with pytest.raises(TypeError, match="col_group must be an integer array, got float32"):
        gptq_quantize(
            w, u, bits=4, group_size=16, col_group=groups.astype(np.float32), scales=scales, zeros=zeros
        )
    with pytest.raises(ValueError, match=r"col_group must be in \[0, 2\^31\)"):
        gptq_quantize(w, u, bits=4, group_size=16, col_group=groups - 1, scales=scales, zeros=zeros)
    with pytest.raises(
        ValueError, match=r"scales must be float32 \[N, groups\] = \[4, 2\], got float32 \(4, 3\)"
    ):
        gptq_quantize(w, u, bits=4, group_size=16, col_group=groups, scales=scales[:, [0, 1, 1]], zeros=zeros)
    with pytest.raises(ValueError, match=r"zeros must be uint8 \[N, groups\] = \[4, 2\], got int8"):
        gptq_quantize(w, u, bits=4, group_size=16, col_group=groups, scales=scales, zeros=zeros.view(np.int8))


# ---- sparsegpt_prune ----------------------------------------------------------------------


def _float64_sparsegpt_nm(w, u, n, m):
    """SparseGPT with an n:m pattern in float64: at each set of m columns the m - n weights of
    a row with the smallest w^2 / U_jj^2 are chosen from the updated weights, then every
    column is zeroed or kept and its error spread over the later columns."""
    W, mask = w.astype(np.float64).copy(), np.ones(w.shape, np.uint8)
    d = np.diag(u)
    for j in range(W.shape[1]):
        if j % m == 0:
            score = W[:, j : j + m] ** 2 / d[j : j + m] ** 2
            drop = np.argsort(score, axis=1, kind="stable")[:, : m - n]
            np.put_along_axis(mask[:, j : j + m], drop, 0, axis=1)
        q = np.where(mask[:, j] == 1, W[:, j], 0.0)
        err = (W[:, j] - q) / u[j, j]
        W[:, j:] -= np.outer(err, u[j, j:])
        W[:, j] = q
    return W, mask


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4)])
def test_sparsegpt_n_m_against_float64(rng, n, m):
    h = _damped_hessian(_inputs(rng, k=128))
    u = cholesky_inverse_upper(h)
    w = rng.standard_normal((32, 128)).astype(np.float32)
    W = w.copy()
    out = sparsegpt_prune(W, u, n=n, m=m)
    assert isinstance(out, SparseGPTResult) and out.codes is None and out.scales is None
    assert (out.mask.reshape(32, -1, m).sum(2) == n).all() and (W[out.mask == 0] == 0).all()
    want, want_mask = _float64_sparsegpt_nm(w, u.astype(np.float64), n, m)
    assert (out.mask == want_mask).mean() > 0.99
    _nearly_all(W, want, rtol=1e-3, atol=1e-4)


def test_sparsegpt_unstructured_and_joint_quantization_on_torch(rng):
    h = _damped_hessian(_inputs(rng, k=128))
    u = cholesky_inverse_upper(h)
    w = rng.standard_normal((32, 128)).astype(np.float32)
    W = w.copy()
    out = sparsegpt_prune(W, u, sparsity=0.25)
    assert out.mask.mean() == 0.75 and (W[out.mask == 0] == 0).all()
    Wt = torch.from_numpy(w.copy())
    tout = sparsegpt_prune(Wt, torch.from_numpy(u), n=2, m=4, bits=4, group_size=32)
    assert (
        isinstance(tout.mask, torch.Tensor) and tout.codes.shape == (32, 128) and tout.scales.shape == (32, 4)
    )
    group = torch.arange(128) // 32
    deq = (tout.codes.float() - tout.zeros[:, group].float()) * tout.scales[:, group]
    torch.testing.assert_close(Wt, deq, rtol=0, atol=0)  # kept weights quantized, pruned ones 0
    assert (tout.codes[tout.mask == 0] == tout.zeros[:, group][tout.mask == 0]).all()
    nout = sparsegpt_prune(w.copy(), u, n=2, m=4, bits=4, group_size=32)
    for a, b in zip(tout, nout, strict=True):
        np.testing.assert_array_equal(a.numpy(), b)


def test_sparsegpt_argument_errors(rng):
    w = rng.standard_normal((4, 32)).astype(np.float32)
    u = np.eye(32, dtype=np.float32)
    with pytest.raises(ValueError, match="an n:m pattern needs 0 < n < m, got 4:4"):
        sparsegpt_prune(w, u, n=4, m=4)
    with pytest.raises(ValueError, match=r"K \(32\) must be a multiple of m \(5\)"):
        sparsegpt_prune(w, u, n=2, m=5)
    with pytest.raises(ValueError, match="n=2 needs m"):
        sparsegpt_prune(w, u, n=2)
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\), got 1.0"):
        sparsegpt_prune(w, u, sparsity=1.0)
    with pytest.raises(TypeError, match="sparsity must be a number, got str"):
        sparsegpt_prune(w, u, sparsity="half")
    with pytest.raises(ValueError, match=r"bits must be 0 .prune only. or in \[2, 8\], got 1"):
        sparsegpt_prune(w, u, bits=1)
    with pytest.raises(ValueError, match=r"bits must be in \[0, 8\], got 9"):
        sparsegpt_prune(w, u, bits=9)
    with pytest.raises(ValueError, match="m must be >= 0, got -4"):
        sparsegpt_prune(w, u, n=2, m=-4)
    with pytest.raises(ValueError, match=r"u must be \[32, 32\]"):
        sparsegpt_prune(w, u[:8], n=2, m=4)
    with pytest.raises(ValueError, match=r"w is empty, shape \(0, 32\)"):
        sparsegpt_prune(w[:0], u, n=2, m=4)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="w is on cuda"):
            sparsegpt_prune(torch.from_numpy(w).cuda(), u, n=2, m=4)
