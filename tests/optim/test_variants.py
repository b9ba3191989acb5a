"""4-bit quantization, SOAP, memory accounting, device-sharded roots and checkpoint round trips."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from jaxsciml.optim import (
    bjorck,
    dequantize,
    linear_square_codebook,
    memory_breakdown,
    preconditioner_memory_bytes,
    quantize,
    scale_by_shampoo,
    scale_by_soap,
    shampoo,
    soap,
    state_memory_bytes,
)


def random_orthogonal(n, d, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, d, d)))
    return jnp.asarray(q, jnp.float32)


def test_linear_square_codebook():
    cb = linear_square_codebook(4)
    assert cb.shape == (16,) and np.all(np.diff(cb) > 0)
    np.testing.assert_allclose(cb[[0, 7, 15]], [-1.0, 0.0, 1.0])
    j = np.arange(16)
    x = -1 + 2 * j / 15
    np.testing.assert_allclose(cb[:7], -(x[:7] ** 2), rtol=1e-6)
    np.testing.assert_allclose(cb[8:], x[8:] ** 2, rtol=1e-6)


@pytest.mark.parametrize("d,block", [(16, 64), (37, 8), (128, 64)])
def test_quantize_roundtrip_and_packing(d, block):
    u = random_orthogonal(3, d)
    qm = quantize(u, block)
    assert qm.codes.dtype == jnp.uint8
    assert qm.codes.shape[:2] == (3, d) and qm.codes.shape[2] * 2 >= d and qm.codes.shape[2] * 2 < d + 2 * block
    v = dequantize(qm, d)
    # error of nearest-code rounding: at most half the largest code gap (0.5 * (1 - 0.8711)) times the chunk scale
    gap = 0.5 * np.max(np.diff(linear_square_codebook(4)))
    assert float(jnp.max(jnp.abs(v - u))) <= gap * float(jnp.max(jnp.abs(u))) + 1e-6
    # identity quantizes exactly
    eye = jnp.broadcast_to(jnp.eye(d), (2, d, d))
    np.testing.assert_array_equal(dequantize(quantize(eye, block), d), eye)


def test_bjorck_restores_orthogonality():
    u = random_orthogonal(4, 64, seed=1)
    v = dequantize(quantize(u, 64), 64)
    eye = jnp.eye(64)

    def ortho_err(m):
        return float(jnp.max(jnp.linalg.norm(jnp.swapaxes(m, -1, -2) @ m - eye, axis=(-2, -1))))

    e0, e1, e2 = ortho_err(v), ortho_err(bjorck(v, 1)), ortho_err(bjorck(v, 3))
    assert e1 < 0.5 * e0 and e2 < 1e-2 * e0


def _mats(seed=0):
    k = jax.random.split(jax.random.key(seed), 2)
    return {"w": jax.random.normal(k[0], (48, 40)), "v": jax.random.normal(k[1], (3, 3, 4, 8)), "b": jnp.ones(5)}


def _grad_seq(params, n, seed=0):
    out = []
    for s in range(n):
        keys = jax.random.split(jax.random.key(seed + 100 * s), 3)
        out.append(
            {
                "w": jax.random.normal(keys[0], (48, 40)) * jnp.linspace(0.1, 3.0, 40),
                "v": jax.random.normal(keys[1], (3, 3, 4, 8)),
                "b": jax.random.normal(keys[2], (5,)),
            }
        )
    return out


def _run(opt, params, grads):
    state = opt.init(params)
    upd = jax.jit(opt.update)
    for g in grads:
        u, state = upd(g, state, params)
    return u, state


@pytest.mark.parametrize("mode,min_cos,max_mem", [("roots", 0.99, 0.6), ("eigenvalue_tracking", 0.97, 0.25)])
def test_four_bit_close_to_fp32_and_small(mode, min_cos, max_mem):
    """4-bit state: update direction within a few degrees of fp32 Shampoo; preconditioner memory <= 0.6 (4-bit roots,
    fp32 statistics) or <= 1/4 (eigenvalue tracking, 4-bit statistics) of fp32 Shampoo's."""
    params = _mats()
    grads = _grad_seq(params, 4)
    kw = dict(block_size=32, beta1=0.0, beta2=1.0, precondition_every=1, graft="none", epsilon=1e-4)
    u32, s32 = _run(scale_by_shampoo(**kw), params, grads)
    u4, s4 = _run(scale_by_shampoo(quantize_eigenvectors=True, bjorck_iters=2, four_bit_mode=mode, **kw), params, grads)
    for k in ("w", "v"):
        a, b = u32[k].ravel(), u4[k].ravel()
        cos = float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))
        assert cos > min_cos, (k, cos)
    np.testing.assert_allclose(u32["b"], u4["b"], rtol=1e-6)
    p32, p4 = preconditioner_memory_bytes(s32), preconditioner_memory_bytes(s4)
    assert p4 <= max_mem * p32, (p4, p32)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(s4) if x.dtype != jnp.uint8)


def test_memory_accounting_counts_bytes_exactly():
    params = {"w": jnp.zeros((6, 4))}
    st = shampoo(1e-2, block_size=None).init(params)
    br = memory_breakdown(st)
    # stats L (6x6) + R (4x4) and roots of the same size, float32
    assert br["stats"] == br["roots"] == 4 * (36 + 16)
    assert br["preconditioner"] == 8 * (36 + 16)
    assert br["graft"] == br["mu"] == 4 * 24
    assert state_memory_bytes(st) == br["total"] == sum(x.nbytes for x in jax.tree_util.tree_leaves(st))
    adam = optax.adamw(1e-3).init(params)
    assert memory_breakdown(adam)["preconditioner"] == 0 and state_memory_bytes(adam) == 4 * (24 + 24 + 1)


def _np_soap(grads, b1, b2, eps):
    """Dense NumPy SOAP, bases refreshed every step: step 1 only builds the statistics (zero update, as reference
    SOAP); from step 2, Adam (bias corrections with the Adam step count t - 1) on Q_L^T G Q_R."""
    m, n = grads[0].shape
    L, R = np.zeros((m, m)), np.zeros((n, n))
    mu, nu = np.zeros((m, n)), np.zeros((m, n))
    outs = []
    for t, g in enumerate(grads, start=1):
        L = b2 * L + (1 - b2) * g @ g.T
        R = b2 * R + (1 - b2) * g.T @ g
        if t == 1:
            outs.append(np.zeros_like(g))
            continue
        ql, qr = np.linalg.eigh(L)[1], np.linalg.eigh(R)[1]
        mu = b1 * mu + (1 - b1) * g
        gr, mr = ql.T @ g @ qr, ql.T @ mu @ qr
        nu = b2 * nu + (1 - b2) * gr**2
        k = t - 1
        d = (mr / (1 - b1**k)) / (np.sqrt(nu / (1 - b2**k)) + eps)
        outs.append(ql @ d @ qr.T)
    return outs


def test_soap_matches_dense_reference(x64):
    """SOAP with bases refreshed every step vs NumPy (sign of eigenvectors cancels); float64 throughout, so the
    bias corrections are float64 too (a float32 correction would leave a ~1e-7 relative floor)."""
    rng = np.random.default_rng(3)
    grads = [rng.normal(size=(4, 3)) * np.array([1.0, 2.0, 5.0]) for _ in range(6)]
    b1, b2, eps = 0.9, 0.95, 1e-8
    opt = scale_by_soap(block_size=None, beta1=b1, beta2=b2, epsilon=eps, precondition_every=1)
    state = opt.init(jnp.zeros((4, 3)))
    for g, want in zip(grads, _np_soap(grads, b1, b2, eps)):
        u, state = opt.update(jnp.asarray(g), state)
        assert u.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(u), want, rtol=1e-10, atol=1e-12)


def test_soap_first_steps_float32_have_the_intended_norm():
    """Unit-scale gradients in float32: step 1 builds the statistics only (zero update); step 2's update norm agrees
    with the float64 dense reference to 1e-3 (before the fix, step 1 applied the basis of G_1 to G_1 and Adam blew
    its round-off up to a norm 53-97x too large)."""
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(64, 48)) for _ in range(3)]
    opt = scale_by_soap(block_size=None, precondition_every=1)
    state = opt.init(jnp.zeros((64, 48), jnp.float32))
    upd = jax.jit(opt.update)
    want = _np_soap(grads, 0.95, 0.95, 1e-8)
    for t, (g, w) in enumerate(zip(grads, want), start=1):
        u, state = upd(jnp.asarray(g, jnp.float32), state)
        if t == 1:
            assert float(jnp.max(jnp.abs(u))) == 0.0
        else:
            got, ref = float(jnp.linalg.norm(u)), float(np.linalg.norm(w))
            assert abs(got - ref) <= 1e-3 * ref, (t, got, ref)
            assert ref < 2.0 * np.sqrt(g.size)  # Adam-like scale, not a blow-up


def test_soap_mixed_tree_and_skip():
    params = _mats()
    grads = _grad_seq(params, 3)
    u, st = _run(soap(1e-3, block_size=16, precondition_every=2, weight_decay=1e-2), params, grads)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(u))
    inner = scale_by_soap(block_size=16)
    s0 = inner.init(params)
    bad = dict(grads[0], b=grads[0]["b"].at[0].set(jnp.inf))
    u, s1 = jax.jit(inner.update)(bad, s0)
    assert int(s1.skipped) == 1 and int(s1.count) == 0 and int(s1.root_fallbacks) == 0
    assert all(bool(jnp.all(x == 0)) for x in jax.tree_util.tree_leaves(u))


@pytest.mark.parametrize(
    "factory",
    [
        lambda mesh: scale_by_shampoo(block_size=8, precondition_every=1, mesh=mesh),
        lambda mesh: scale_by_shampoo(block_size=8, precondition_every=1, quantize_eigenvectors=True, mesh=mesh),
        lambda mesh: scale_by_shampoo(
            block_size=8,
            precondition_every=1,
            quantize_eigenvectors=True,
            four_bit_mode="eigenvalue_tracking",
            mesh=mesh,
        ),
        lambda mesh: scale_by_soap(block_size=8, precondition_every=1, mesh=mesh),
    ],
    ids=["fp32", "4bit", "4bit-tracking", "soap"],
)
def test_sharded_roots_match_single_device(devices4, factory):
    mesh = Mesh(np.array(devices4), ("blocks",))
    params = {"w": _mats()["w"]}  # 48 x 40 with block 8: 30 blocks, two modes -> 60 roots over 4 devices
    grads = [{"w": g["w"]} for g in _grad_seq(params, 2)]
    opt_mesh, opt_one = factory(mesh), factory(None)
    jaxpr = str(jax.make_jaxpr(opt_mesh.update)(grads[0], opt_mesh.init(params)))
    assert "shard_map" in jaxpr
    u1, s1 = _run(opt_one, params, grads)
    u4, s4 = _run(opt_mesh, params, grads)
    for a, b in zip(jax.tree_util.tree_leaves(u1), jax.tree_util.tree_leaves(u4)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s4)):
        if a.dtype == jnp.uint8:
            assert np.mean(np.asarray(a) == np.asarray(b)) > 0.99
        else:
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "opt",
    [
        shampoo(1e-2, block_size=16, precondition_every=1),
        shampoo(1e-2, block_size=16, precondition_every=1, quantize_eigenvectors=True),
        soap(1e-3, block_size=16, precondition_every=1),
    ],
    ids=["fp32", "4bit", "soap"],
)
def test_checkpoint_roundtrip_bit_exact(tmp_path, opt):
    from jaxsciml.train import Checkpointer

    params = _mats()
    grads = _grad_seq(params, 2)
    _, state = _run(opt, params, grads)
    with Checkpointer(tmp_path / "ckpt", max_to_keep=2) as ck:
        ck.save(2, params, state)
        like_state = opt.init(params)
        model, restored, step, _, _ = ck.restore(params, like_state)
    assert step == 2
    la, ta = jax.tree_util.tree_flatten(state)
    lb, tb = jax.tree_util.tree_flatten(restored)
    assert ta == tb
    for a, b in zip(la, lb):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # training continues identically from the restored state
    u_a, _ = jax.jit(opt.update)(grads[0], state, params)
    u_b, _ = jax.jit(opt.update)(grads[0], restored, params)
    for a, b in zip(jax.tree_util.tree_leaves(u_a), jax.tree_util.tree_leaves(u_b)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
