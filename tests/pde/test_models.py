"""NSM and FNO models: shapes, transformations, resolution independence, and training on periodic Poisson."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsciml import pde
from jaxsciml.train import fit
from tests.helpers import assert_transformable


def _nsm_poisson(n=11, width=16, depth=2, seed=0):
    # the smooth source (training wiring at a short budget; the paper's rougher sources reach ~5.5% at this size, with
    # or without the output scale, and are covered by test_paper_recipe_trains_out_of_the_box)
    prob = pde.PoissonPeriodic(n=n, length_scale=0.2, kernel="squared_exponential")
    model = pde.NSM(prob.basis, 1, 1, width=width, depth=depth, activation=jax.nn.gelu, key=jax.random.key(seed))
    return prob, model


def test_nsm_shapes_modes_and_errors():
    tb = pde.TensorBasis(pde.Fourier(9), pde.Chebyshev(6))
    m = pde.NSM(tb, 2, 3, width=8, depth=2, modes=(5, 4), key=jax.random.key(0))
    out = m(jnp.ones((2, 9, 6)))
    assert out.shape == (3, 9, 6)
    # Fourier axis: complex weights on frequencies 0..modes//2 (the last periodic axis keeps k >= 0 only)
    assert m.layers[0].kernel.shape == m.layers[0].kernel_imag.shape == (3, 4, 8, 8)
    assert [a.shape for a in m.layers[0].index_mix] == [(8, 4, 4)]
    with pytest.raises(ValueError, match="`x` must have shape"):
        m(jnp.ones((2, 6, 9)))
    with pytest.raises(ValueError, match="`modes`"):
        pde.NSM(tb, 1, modes=(10, 4), key=jax.random.key(0))
    with pytest.raises(TypeError, match="TensorBasis"):
        pde.NSM(pde.Fourier(9), 1, key=jax.random.key(0))


def test_nsm_per_mode_map_truncation(x64):
    """Coefficients above `modes` only see the mode-independent linear path."""
    tb = pde.TensorBasis(pde.Fourier(9))
    layer = pde.SpectralLayer(3, 2, (4,), key=jax.random.key(1))
    v = jax.random.normal(jax.random.key(2), (3, 9))
    out = layer(v)
    np.testing.assert_allclose(out[:, 4:], layer.linear.T @ v[:, 4:], atol=1e-12)
    k3 = np.einsum("i,io->o", v[:, 3], layer.kernel[3]) + layer.linear.T @ v[:, 3]
    np.testing.assert_allclose(out[:, 3], k3, atol=1e-12)
    assert tb.shape == (9,)


def test_nsm_transformable(x64):
    prob, model = _nsm_poisson(n=7, width=4, depth=1)
    f = prob.sample(jax.random.key(0), 1)[0]

    @jax.jit
    def fn(f):
        return prob.constrain(model(prob.model_input(f)), f)

    assert_transformable(fn, f, fd_rtol=1e-5)
    # grad w.r.t. the model parameters is finite and matches finite differences along the lift weights
    fb = prob.sample(jax.random.key(1), 3)
    g = eqx.filter_grad(lambda m: pde.nsm_loss(m, prob, fb))(model)
    d = jax.random.normal(jax.random.key(2), model.lift.shape)
    eps = 1e-6
    lp = pde.nsm_loss(eqx.tree_at(lambda m: m.lift, model, model.lift + eps * d), prob, fb)
    lm = pde.nsm_loss(eqx.tree_at(lambda m: m.lift, model, model.lift - eps * d), prob, fb)
    np.testing.assert_allclose(jnp.vdot(g.lift, d), (lp - lm) / (2 * eps), rtol=1e-5)


def test_nsm_any_resolution(x64):
    prob, model = _nsm_poisson(n=9, width=4, depth=1)
    f = prob.sample(jax.random.key(0), 2)
    u = pde.nsm_predict(model, prob, f)
    fine = prob.solution_values(u, (64, 64))
    coarse = prob.solution_values(u, (16, 16))
    np.testing.assert_allclose(fine[:, ::4, ::4], coarse, atol=1e-12)  # same function, sampled on nested grids


def test_fno_resolution_and_pinn_loss(x64):
    prob = pde.PoissonPeriodic(n=9, length_scale=0.3)
    fno = pde.FNO(2, 1, 1, width=8, depth=2, modes=4, key=jax.random.key(0))
    f = prob.sample(jax.random.key(1), 2)
    for m in (16, 32):
        u = pde.fno_predict(fno, prob, f, (m, m))
        assert u.shape == (2, m, m)
        np.testing.assert_allclose(jnp.mean(u, axis=(1, 2)), 0.0, atol=1e-12)  # mean pinned
        assert jnp.isfinite(pde.fno_loss(fno, prob, f, (m, m)))
    # the PINN loss of the exact solution is small (FD truncation error only) compared with a wrong solution
    uref = jax.vmap(lambda p: prob.reference(p, (32, 32)))(f)
    ok = prob.grid_loss(uref, f, (32, 32))
    bad = prob.grid_loss(0.5 * uref, f, (32, 32))
    assert float(ok) < 0.05 * float(bad)
    with pytest.raises(ValueError, match="too small"):
        fno(jnp.ones((1, 6, 6)))


def test_nsm_poisson_fast_training():
    """A short run (float32): < 3% relative L2 after 300 steps (typically ~0.5%); fails for a broken loss, residual,
    model or optimiser wiring."""
    prob, model = _nsm_poisson(n=11, width=16, depth=2)
    ft = prob.sample(jax.random.key(99), 32)
    uref = jax.vmap(prob.solve)(ft)
    err0 = float(jnp.mean(pde.relative_l2(pde.nsm_predict(model, prob, ft), uref, prob.basis)))
    model, rec = pde.train_operator(
        model,
        lambda m, p: pde.nsm_loss(m, prob, p),
        lambda k: prob.sample(k, 16),
        300,
        jax.random.key(1),
        optimizer=pde.default_optimizer(300, 3e-3),
    )
    err = float(jnp.mean(pde.relative_l2(pde.nsm_predict(model, prob, ft), uref, prob.basis)))
    assert err < 0.03 and err < 0.1 * err0, (err0, err)
    assert rec["loss"][-1] < 0.05 * rec["loss"][0]


def test_train_operator_is_fit_and_reports_timing():
    """train_operator is a thin call of train.fit (data(key), nonfinite="raise"): bit-identical model and losses; its
    record keeps the fields benchmarks use; a non-finite loss raises naming the step."""
    from jaxsciml import train

    prob, model = _nsm_poisson(n=7, width=8, depth=1)
    opt = pde.default_optimizer(6, 3e-3)

    def loss(m, p):
        return pde.nsm_loss(m, prob, p)

    def sample(k):
        return prob.sample(k, 4)

    trained, rec = pde.train_operator(model, loss, sample, 6, jax.random.key(1), optimizer=opt, steps_per_call=4)
    ref = train.fit(model, loss, opt, sample, 6, key=jax.random.key(1), steps_per_call=1, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(ref.model)))
    assert rec["loss"] == ref.history["loss"] and rec["steps"] == 6
    assert rec["wall_s"] >= rec["train_s"] > 0 and rec["compile_s"] >= 0 and rec["step_s"] > 0

    k, subkeys = jax.random.key(1), []
    for _ in range(4):
        k, sub = jax.random.split(k)
        subkeys.append(jax.random.key_data(sub))

    def nan_at_step_3(k):  # train_operator draws batch i from the i-th split of its key
        # a finite but huge source (the pde input checks reject NaN sources themselves): the loss overflows to inf
        bad = jnp.all(jax.random.key_data(k) == subkeys[3])
        return sample(k) * jnp.where(bad, 1e30, 1.0)

    with pytest.raises(FloatingPointError, match="at step 3 "):
        pde.train_operator(model, loss, nan_at_step_3, 6, jax.random.key(1), optimizer=opt)
    with pytest.raises(ValueError, match="`steps`"):
        pde.train_operator(model, loss, sample, 0, jax.random.key(1))


@pytest.mark.slow
def test_nsm_poisson_reaches_one_percent():
    """Must-hold: NSM trained briefly on periodic Poisson reaches < 1% relative L2 on held-out sources."""
    prob = pde.PoissonPeriodic(n=15, length_scale=0.2, kernel="squared_exponential")
    model = pde.NSM(prob.basis, 1, 1, width=32, depth=4, activation=jax.nn.gelu, activation_grid=(16, 16),
                    key=jax.random.key(0))  # fmt: skip
    steps = 2500
    model, _ = pde.train_operator(
        model,
        lambda m, p: pde.nsm_loss(m, prob, p),
        lambda k: prob.sample(k, 16),
        steps,
        jax.random.key(1),
        optimizer=pde.default_optimizer(steps, 3e-3),
    )
    ft = prob.sample(jax.random.key(99), 64)
    err = float(jnp.mean(pde.relative_l2(pde.nsm_predict(model, prob, ft), jax.vmap(prob.solve)(ft), prob.basis)))
    assert err < 0.01, err


def test_nsm_output_scale_multiplies_the_output():
    basis = pde.TensorBasis(pde.Fourier(7), pde.Chebyshev(6))
    x = jax.random.normal(jax.random.key(0), (2, 7, 6))
    a = pde.NSM(basis, 2, 1, width=8, depth=1, key=jax.random.key(1), output_scale=1e-3)
    b = pde.NSM(basis, 2, 1, width=8, depth=1, key=jax.random.key(1))
    assert b.output_scale == pde.OUTPUT_SCALE == 1.0
    np.testing.assert_allclose(a(x), 1e-3 * b(x), rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="output_scale"):
        pde.NSM(basis, 2, 1, key=jax.random.key(1), output_scale=0.0)


@pytest.mark.slow
def test_paper_recipe_trains_out_of_the_box():
    """The authors' recipe (with their output scale 1e-3, no longer the default) on the paper's periodic Poisson:
    ReLU, Adam 1e-3 decayed as lr * 1e-3^(step/steps),
    batch 16, width 32, depth 4; 1000 steps reach 1.48% relative error with 15x15 modes (56% without the output
    scale, as measured with 31x31 modes). Bound 3%: about 2x the measured error (seed and platform variation)."""
    prob = pde.PoissonPeriodic(n=15)
    model = pde.NSM(
        prob.basis, 1, 1, width=32, depth=4, activation=jax.nn.relu, key=jax.random.key(0), output_scale=1e-3
    )
    steps = 1000
    res = fit(
        model,
        lambda m, p: pde.nsm_loss(m, prob, p),
        optax.adam(optax.exponential_decay(1e-3, steps, 1e-3)),
        lambda k: prob.sample(k, 16),
        steps,
        key=jax.random.key(1),
        progress=False,
    )
    test = prob.sample(jax.random.key(123), 32)
    ref = jax.vmap(lambda p: prob.reference(p, (64, 64)))(test)
    err = float(pde.relative_error(prob.solution_values(pde.nsm_predict(res.model, prob, test), (64, 64)), ref))
    assert err < 0.03, err
