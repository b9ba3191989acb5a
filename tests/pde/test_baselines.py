"""The NSM paper's baselines SNO, T1 and CNO: shapes, exact linear special cases (identity, derivative, translation,
band-limited reconstruction at another resolution), jit/vmap/grad, a short training run, and bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsciml import pde
from jaxsciml.pde._spectral_grid import grid_forward, grid_inverse, kept_shape


def _identity(x):
    return x


def _band_limited(shape, periodic):
    """A sum of products of cos/sin(2 pi k x) (periodic axes, |k| <= 3) and cos(pi k t) (bounded axes, k <= 3) on the
    uniform grid of ``shape``: reproduced exactly by 4 kept modes per axis."""
    axes = [np.arange(n) / n if p else np.linspace(0.0, 1.0, n) for n, p in zip(shape, periodic)]
    mesh = np.meshgrid(*axes, indexing="ij")
    out = np.zeros(shape)
    rng = np.random.default_rng(0)
    for _ in range(4):
        term = np.ones(shape)
        for x, p in zip(mesh, periodic):
            k = rng.integers(0, 4)
            term = term * (np.cos(2 * np.pi * k * x + rng.uniform(0, 6)) if p else np.cos(np.pi * k * x))
        out += rng.normal() * term
    return out[None]


@pytest.mark.parametrize("periodic", [(True, True), (True, False), (False,), (False, True, True)])
def test_grid_transform_reproduces_band_limited_at_any_resolution(x64, periodic):
    modes = (4,) * len(periodic)
    base = tuple(9 if len(periodic) == 3 else 16 for _ in periodic)
    c = grid_forward(jnp.asarray(_band_limited(base, periodic)), periodic, modes)
    assert c.shape == (1, *kept_shape(periodic, modes))
    for shape in (base, tuple(n + 7 for n in base), tuple(7 for _ in base)):
        out = grid_inverse(c, periodic, modes, shape)
        np.testing.assert_allclose(out, _band_limited(shape, periodic), atol=1e-12)


# ----------------------------------------------------------------------------------------------------------- SNO
def _sno_linear(basis, mode_mix, activation=_identity):
    """A width-1 SNO with identity channel maps and activation: ``x -> x @ A_1 ... @ A_depth``."""
    sno = pde.SNO(
        basis, 1, 1, width=1, depth=len(mode_mix), activation=activation, output_scale=1.0, key=jax.random.key(0)
    )
    one = jnp.ones((1, 1))
    sno = eqx.tree_at(lambda m: (m.lift, m.proj1, m.proj2), sno, (one, one, one))
    sno = eqx.tree_at(lambda m: m.channel_mix, sno, tuple(one for _ in mode_mix))
    return eqx.tree_at(lambda m: m.mode_mix, sno, tuple(mode_mix))


def test_sno_identity_and_derivative_kernel_are_exact(x64):
    basis = pde.TensorBasis(pde.Fourier(7), pde.Chebyshev(6))
    x = jax.random.normal(jax.random.key(1), (1, *basis.shape), jnp.float64)
    m = int(np.prod(basis.shape))
    eye = jnp.eye(m)
    np.testing.assert_allclose(_sno_linear(basis, [eye, eye])(x), x, atol=1e-14)
    # A = the matrix of d/dx (Fourier axis) then d/dt (Chebyshev axis) on flattened coefficients: the SNO's dense
    # mode mixing represents any linear map between coefficient vectors, e.g. exact spectral differentiation
    dx = jax.vmap(lambda e: basis.derivative(e.reshape(basis.shape), 0).reshape(-1))(eye)
    dt = jax.vmap(lambda e: basis.derivative(e.reshape(basis.shape), 1).reshape(-1))(eye)
    out = _sno_linear(basis, [dx, dt])(x)
    ref = basis.derivative(basis.derivative(x[0], 0), 1)
    np.testing.assert_allclose(out[0], ref, rtol=1e-12, atol=1e-10)


def test_sno_activation_acts_on_coefficients(x64):
    basis = pde.TensorBasis(pde.Fourier(5))
    sno = _sno_linear(basis, [jnp.eye(5)], jnp.abs)
    x = jnp.asarray([[0.5, -1.0, 2.0, -3.0, 0.25]])
    # |.| on the coefficients (twice: layer and projection), not on the function's values
    np.testing.assert_allclose(sno(x), jnp.abs(x), atol=1e-15)


def test_sno_shapes_and_checks():
    prob = pde.ReactionDiffusion(nx=9, nt=6)
    sno = pde.SNO(prob.basis, 2, 1, width=4, depth=2, key=jax.random.key(0))
    params = prob.sample(jax.random.key(1), 3)
    out = jax.eval_shape(lambda m, p: pde.nsm_predict(m, prob, p), sno, params)  # traced, not compiled
    assert out.shape == (3, *prob.basis.shape)
    with pytest.raises(ValueError, match="`x` must have shape"):
        jax.eval_shape(sno, jnp.zeros((2, 9, 5)))
    with pytest.raises(TypeError, match="`basis` must be a TensorBasis"):
        pde.SNO(pde.Fourier(9), 1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="`width`"):
        pde.SNO(prob.basis, 1, width=0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="`output_scale`"):
        pde.SNO(prob.basis, 1, output_scale=float("nan"), key=jax.random.key(0))


# ------------------------------------------------------------------------------------------------------------ T1
def _t1_linear(periodic, modes, depth=2, activation=_identity):
    """A width-1 T1 without coordinates, zero per-mode weights, identity channel maps and activation: the low-pass
    projection onto the kept modes."""
    axes = ["fourier" if p else "chebyshev" for p in periodic]
    t1 = pde.T1(
        axes, 1, 1, width=1, depth=depth, modes=modes, activation=activation, coordinates=False, key=jax.random.key(0)
    )
    one = jnp.ones((1, 1))
    t1 = eqx.tree_at(lambda m: m.lift, t1, one)
    t1 = eqx.tree_at(lambda m: m.proj1, t1, jnp.ones((1, 2)))
    t1 = eqx.tree_at(lambda m: m.proj2, t1, jnp.full((2, 1), 0.5))
    for i in range(depth):
        t1 = eqx.tree_at(lambda m, i=i: m.layers[i].linear, t1, one)
        t1 = eqx.tree_at(lambda m, i=i: m.layers[i].weight_re, t1, jnp.zeros_like(t1.layers[i].weight_re))
        if t1.layers[i].weight_im is not None:
            t1 = eqx.tree_at(lambda m, i=i: m.layers[i].weight_im, t1, jnp.zeros_like(t1.layers[i].weight_im))
    return t1


@pytest.mark.parametrize("periodic", [(True, True), (True, False)])
def test_t1_identity_is_identity_at_any_output_resolution(x64, periodic):
    t1 = _t1_linear(periodic, 4)
    x = jnp.asarray(_band_limited((16, 12), periodic))
    np.testing.assert_allclose(t1(x), x, atol=1e-12)
    # trained on one grid, evaluated on another: the band-limited function sampled on the new grid
    np.testing.assert_allclose(t1(x, (33, 20)), _band_limited((33, 20), periodic), atol=1e-12)
    # content above the kept modes is removed (the output is band-limited by construction)
    hi = jnp.asarray(np.cos(2 * np.pi * 6 * np.arange(16) / 16))[None, :, None] * jnp.ones((1, 16, 12))
    np.testing.assert_allclose(t1(hi), 0.0, atol=1e-12)


def test_t1_complex_per_mode_weight_translates(x64):
    """One layer with ``K_k = e^{-2 pi i k s}`` and ``W = 0`` shifts a periodic function by ``s`` (frequency-domain
    weights act on the complex coefficients, so a phase rotation is representable)."""
    t1 = _t1_linear((True,), 5, depth=1)
    s = 0.13
    k = np.arange(5)
    t1 = eqx.tree_at(lambda m: m.layers[0].linear, t1, jnp.zeros((1, 1)))
    t1 = eqx.tree_at(lambda m: m.layers[0].weight_re, t1, jnp.asarray(np.cos(2 * np.pi * k * s))[:, None, None])
    t1 = eqx.tree_at(lambda m: m.layers[0].weight_im, t1, jnp.asarray(-np.sin(2 * np.pi * k * s))[:, None, None])
    x = np.arange(32) / 32

    def f(x):
        return np.cos(2 * np.pi * 3 * x + 0.4) + 0.5 * np.sin(2 * np.pi * 4 * x) - 0.2

    np.testing.assert_allclose(t1(jnp.asarray(f(x))[None])[0], f(x - s), atol=1e-12)


def test_t1_nonlinearity_is_in_frequency_space(x64):
    """With ``sigma = relu`` T1 applies it to Re/Im of the coefficients: a pure negative cosine ``-cos(2 pi x)`` has
    coefficient ``c_1 = -1/2`` (real), which ReLU zeroes; on the grid ReLU would keep ``max(-cos, 0)``."""
    t1 = _t1_linear((True,), 4, depth=2, activation=jax.nn.relu)
    x = -jnp.cos(2 * np.pi * jnp.arange(16) / 16)[None]
    np.testing.assert_allclose(t1(x), 0.0, atol=1e-14)


def test_t1_shapes_and_checks():
    prob = pde.ReactionDiffusion(nx=9, nt=6)
    t1 = pde.T1(prob.basis, 1, 1, width=4, depth=2, modes=(4, 3), key=jax.random.key(0))
    params = prob.sample(jax.random.key(1), 2)
    assert jax.eval_shape(lambda m, p: pde.fno_predict(m, prob, p, (16, 8)), t1, params).shape == (2, 16, 8)
    assert jax.eval_shape(lambda x: t1(x, (24, 5)), jnp.zeros((1, 16, 8))).shape == (1, 24, 5)
    with pytest.raises(ValueError, match="`x` has 6 grid points along axis 0; 4 Fourier modes need at least 7"):
        jax.eval_shape(t1, jnp.zeros((1, 6, 8)))
    with pytest.raises(ValueError, match="`shape` has 2 grid points along axis 1"):
        jax.eval_shape(lambda x: t1(x, (16, 2)), jnp.zeros((1, 16, 8)))
    with pytest.raises(ValueError, match="`x` must have shape"):
        jax.eval_shape(t1, jnp.zeros((2, 16, 8)))
    with pytest.raises(ValueError, match="`axes` entries must be 'fourier' or 'chebyshev'"):
        pde.T1(["fourier", "legendre"], 1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="`modes`"):
        pde.T1(prob.basis, 1, modes=(4, 0), key=jax.random.key(0))


# ----------------------------------------------------------------------------------------------------------- CNO
def test_cno_layer_reproduces_non_periodic_band_limited(x64):
    """A layer with per-mode weight 1 and no other path is the projection onto the kept Fourier x Chebyshev modes:
    exact for ``cos(pi k t)`` content along the bounded axis, which an FFT along that axis (no padding) would
    wrap around from ``t = 1`` to ``t = 0``."""
    periodic = (True, False)
    layer = pde.ChebyshevFourierLayer(1, periodic, (4, 4), jax.random.key(0), jnp.float64)
    layer = eqx.tree_at(lambda m: m.weight_re, layer, jnp.ones_like(layer.weight_re))
    layer = eqx.tree_at(lambda m: m.weight_im, layer, jnp.zeros_like(layer.weight_im))
    layer = eqx.tree_at(lambda m: m.linear, layer, jnp.zeros((1, 1)))
    v = jnp.asarray(_band_limited((16, 11), periodic))
    np.testing.assert_allclose(layer(v), v, atol=1e-12)
    t = jnp.linspace(0.0, 1.0, 11)
    ramp = jnp.broadcast_to(t, (1, 16, 11))  # not band-limited in t: projected, but no wrap-around at the ends
    err = jnp.max(jnp.abs(layer(ramp) - ramp))
    assert 1e-4 < err < 0.1


def test_cno_shapes_and_checks():
    prob = pde.ReactionDiffusion(nx=9, nt=6)
    cno = pde.CNO(prob.basis, 1, 1, width=4, depth=2, modes=4, key=jax.random.key(0))
    params = prob.sample(jax.random.key(1), 2)
    assert jax.eval_shape(lambda m, p: pde.fno_predict(m, prob, p, (16, 8)), cno, params).shape == (2, 16, 8)
    with pytest.raises(ValueError, match="`x` has 3 grid points along axis 1; 4 Chebyshev modes need at least 4"):
        jax.eval_shape(cno, jnp.zeros((1, 16, 3)))
    with pytest.raises(ValueError, match="`x` must have shape"):
        jax.eval_shape(cno, jnp.zeros((1, 16)))


# ------------------------------------------------------------------------------------- transformations, training
def _cases():
    pp = pde.PoissonPeriodic(n=9)
    rd = pde.ReactionDiffusion(nx=9, nt=6)
    k = jax.random.key(0)
    return [
        (
            "SNO",
            pp,
            pde.SNO(pp.basis, 1, 1, width=8, depth=2, output_scale=1.0, key=k),
            lambda m, p: pde.nsm_loss(m, pp, p),
        ),
        (
            "T1",
            rd,
            pde.T1(rd.basis, 1, 1, width=8, depth=2, modes=4, key=k),
            lambda m, p: pde.fno_loss(m, rd, p, (16, 8)),
        ),
        (
            "CNO",
            rd,
            pde.CNO(rd.basis, 1, 1, width=8, depth=2, modes=4, key=k),
            lambda m, p: pde.fno_loss(m, rd, p, (16, 8)),
        ),
    ]


@pytest.mark.parametrize("case", range(3), ids=["SNO", "T1", "CNO"])
def test_jit_vmap_grad(case):
    name, prob, model, loss = _cases()[case]
    params = prob.sample(jax.random.key(2), 3)
    if name == "SNO":
        x = jax.vmap(prob.model_input)(params)
    else:
        x = jax.vmap(lambda p: prob.grid_input(p, (16, 8)))(params)
    batched = eqx.filter_jit(lambda m, x: jax.vmap(m)(x))(model, x)
    np.testing.assert_allclose(batched[1], model(x[1]), rtol=1e-5, atol=1e-6)
    g = eqx.filter_jit(eqx.filter_grad(loss))(model, params)
    leaves = jax.tree_util.tree_leaves(eqx.filter(g, eqx.is_inexact_array))
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
    assert sum(float(jnp.sum(jnp.abs(leaf))) for leaf in leaves) > 0


@pytest.mark.parametrize("case", range(3), ids=["SNO", "T1", "CNO"])
def test_short_training_decreases_loss(case):
    _, prob, model, loss = _cases()[case]
    opt = pde.default_optimizer(40, 1e-2)
    _, rec = pde.train_operator(model, loss, lambda k: prob.sample(k, 4), 40, jax.random.key(3), optimizer=opt)
    first, last = np.mean(rec["loss"][:3]), np.mean(rec["loss"][-5:])
    # measured (seed 3): SNO 343 -> 0.93, T1 1.49 -> 0.92, CNO 1.52 -> below 0.76
    assert np.isfinite(last) and last < 0.75 * first, (first, last)
