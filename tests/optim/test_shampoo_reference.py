"""Shampoo vs a dense NumPy reference (full L and R, explicit matrix roots via numpy eigh), float64.

Tolerance 1e-6 absolute/relative: both sides compute the same float64 eigendecompositions, so agreement is ~1e-12
for well-separated spectra; 1e-6 leaves room for eigenvalue clustering in the damped roots.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsciml.optim import scale_by_shampoo


def np_root(s, p, eps):
    w, q = np.linalg.eigh(0.5 * (s + s.T))
    w = np.maximum(w, 0.0)
    lmax = w.max()
    return (q * (w + eps * lmax) ** (-p)) @ q.T


def split(d, bs):
    if bs is None or d <= bs:
        return [slice(0, d)]
    return [slice(i, min(i + bs, d)) for i in range(0, d, bs)]


def ref_matrix_shampoo(grads, bs, eps, beta2, graft, p=0.25, geps=1e-8, gbeta2=0.999):
    """Dense reference for a 2-D parameter; precondition every step, start at step 1, no momentum."""
    m, n = grads[0].shape
    rows, cols = split(m, bs), split(n, bs)
    blocks = list(itertools.product(range(len(rows)), range(len(cols))))
    L = {k: np.zeros((rows[k[0]].stop - rows[k[0]].start,) * 2) for k in blocks}
    R = {k: np.zeros((cols[k[1]].stop - cols[k[1]].start,) * 2) for k in blocks}
    c = 1.0 if beta2 == 1.0 else 1.0 - beta2
    acc = np.zeros((m, n))
    outs = []
    for t, g in enumerate(grads, start=1):
        if graft == "adagrad":
            acc = acc + g * g
            a = g / (np.sqrt(acc) + geps)
        elif graft == "adam":
            acc = gbeta2 * acc + (1 - gbeta2) * g * g
            a = g / (np.sqrt(acc / (1 - gbeta2**t)) + geps)
        else:
            a = g
        u = np.zeros((m, n))
        for k in blocks:
            sl = (rows[k[0]], cols[k[1]])
            gb = g[sl]
            L[k] = beta2 * L[k] + c * gb @ gb.T
            R[k] = beta2 * R[k] + c * gb.T @ gb
            d = np_root(L[k], p, eps) @ gb @ np_root(R[k], p, eps)
            if graft != "none":
                d = d * np.linalg.norm(a[sl]) / np.linalg.norm(d)
            u[sl] = d
        outs.append(u)
    return outs


def run_opt(opt, grads):
    state = opt.init(jnp.zeros_like(grads[0]))
    upd = jax.jit(opt.update)
    outs = []
    for g in grads:
        u, state = upd(jnp.asarray(g), state)
        outs.append(np.asarray(u))
    return outs


def make_grads(shape, steps=4, seed=0):
    rng = np.random.default_rng(seed)
    scale = np.linspace(0.2, 3.0, shape[0])[:, None]
    return [rng.normal(size=shape) * scale for _ in range(steps)]


@pytest.mark.parametrize(
    "shape,bs,graft,beta2",
    [
        ((6, 5), None, "none", 1.0),
        ((6, 5), 4, "none", 1.0),
        ((6, 5), None, "adagrad", 1.0),
        ((7, 9), 4, "adagrad", 1.0),
        ((7, 9), 4, "adam", 0.9),
        ((5, 10), 3, "sgd", 0.95),
    ],
)
def test_matrix_matches_dense_reference(x64, shape, bs, graft, beta2):
    grads = make_grads(shape)
    eps = 1e-4
    opt = scale_by_shampoo(block_size=bs, beta1=0.0, beta2=beta2, epsilon=eps, precondition_every=1, graft=graft)
    got = run_opt(opt, grads)
    want = ref_matrix_shampoo(grads, bs, eps, beta2, graft)
    for g, w in zip(got, want):
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def unfold(x, mode):
    return np.moveaxis(x, mode, 0).reshape(x.shape[mode], -1)


def mode_mul(x, m, mode):
    return np.moveaxis(np.tensordot(m, np.moveaxis(x, mode, 0), axes=1), 0, mode)


def test_order3_tensor_matches_reference(x64):
    """A (3, 4, 5) tensor (no merging with block_size=None): three mode statistics, exponent 1/6 each."""
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=(3, 4, 5)) for _ in range(3)]
    eps = 1e-4
    opt = scale_by_shampoo(block_size=None, beta1=0.0, beta2=1.0, epsilon=eps, precondition_every=1, graft="none")
    got = run_opt(opt, grads)
    stats = [np.zeros((d, d)) for d in (3, 4, 5)]
    for g, out in zip(grads, got):
        d = g
        for i in range(3):
            stats[i] += unfold(g, i) @ unfold(g, i).T
        for i in range(3):
            d = mode_mul(d, np_root(stats[i], 1 / 6, eps), i)
        np.testing.assert_allclose(out, d, rtol=1e-6, atol=1e-6)


def test_exponent_override_and_refresh_interval(x64):
    """Exponent 1/2 (Shampoo^2) and roots refreshed every 2 steps (stale roots in between)."""
    grads = make_grads((4, 3), steps=4)
    eps = 1e-4
    opt = scale_by_shampoo(
        block_size=None,
        beta1=0.0,
        beta2=1.0,
        epsilon=eps,
        precondition_every=2,
        graft="none",
        exponent_override=0.5,
        stagger_refresh=False,
    )
    got = run_opt(opt, grads)
    L, R = np.zeros((4, 4)), np.zeros((3, 3))
    roots = (np.eye(4), np.eye(3))
    for t, (g, out) in enumerate(zip(grads, got), start=1):
        L += g @ g.T
        R += g.T @ g
        if (t - 1) % 2 == 0:
            roots = (np_root(L, 0.5, eps), np_root(R, 0.5, eps))
        np.testing.assert_allclose(out, roots[0] @ g @ roots[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bias_correction", [False, True])
def test_momentum_matches_reference(x64, bias_correction):
    """beta1 EMA momentum on top of the (ungrafted) Shampoo direction: used as it is (default, distributed_shampoo's
    moving average) or with Adam's bias correction 1 / (1 - beta1^t)."""
    grads = make_grads((4, 3), steps=3)
    eps, b1 = 1e-4, 0.9
    opt = scale_by_shampoo(
        block_size=None, beta1=b1, beta2=1.0, epsilon=eps, precondition_every=1, graft="none",
        bias_correction=bias_correction,
    )  # fmt: skip
    got = run_opt(opt, grads)
    dirs = ref_matrix_shampoo(grads, None, eps, 1.0, "none")
    mu = np.zeros((4, 3))
    for t, (d, out) in enumerate(zip(dirs, got), start=1):
        mu = b1 * mu + (1 - b1) * d
        np.testing.assert_allclose(out, mu / (1 - b1**t) if bias_correction else mu, rtol=1e-6, atol=1e-6)


def test_newton_matches_eigh(x64):
    grads = make_grads((7, 9), steps=3)
    kw = dict(block_size=4, beta1=0.0, beta2=1.0, epsilon=1e-3, precondition_every=1, graft="none")
    a = run_opt(scale_by_shampoo(root_method="eigh", **kw), grads)
    b = run_opt(scale_by_shampoo(root_method="newton", **kw), grads)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def test_power_iterations_level_statistic(x64):
    """power_iterations=2: the preconditioned level accumulates G R_hat G^T with the trace-normalised level-0 R."""
    grads = make_grads((4, 3), steps=3)
    eps = 1e-4
    opt = scale_by_shampoo(
        block_size=None, beta1=0.0, beta2=1.0, epsilon=eps, precondition_every=1, graft="none", power_iterations=2
    )
    got = run_opt(opt, grads)
    L0, R0 = np.zeros((4, 4)), np.zeros((3, 3))
    L1, R1 = np.zeros((4, 4)), np.zeros((3, 3))

    def nrm(f):
        tr = np.trace(f)
        return f * f.shape[0] / tr if tr > 0 else np.eye(f.shape[0])

    for g, out in zip(grads, got):
        L1 += g @ nrm(R0) @ g.T
        R1 += g.T @ nrm(L0) @ g
        L0 += g @ g.T
        R0 += g.T @ g
        want = np_root(L1, 0.25, eps) @ g @ np_root(R1, 0.25, eps)
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
