"""Bad input gets a clear error naming the argument: NaN/inf, complex, half precision, wrong shapes, an unsolvable
periodic Poisson source, and a Navier--Stokes step past the explicit stability limit."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsciml import pde

_RUNTIME = (eqx.EquinoxRuntimeError, RuntimeError, ValueError)  # eqx.error_if raises at run time


@pytest.fixture(scope="module")
def poisson():
    prob = pde.PoissonPeriodic(n=9)
    model = pde.NSM(prob.basis, 1, 1, width=4, depth=1, key=jax.random.key(0))
    return prob, model, prob.sample(jax.random.key(1), 2)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_params_raise(poisson, bad):
    prob, model, f = poisson
    fb = f.at[1, 2, 3].set(bad)
    with pytest.raises(_RUNTIME, match="params.*NaN or inf"):
        jax.block_until_ready(pde.nsm_predict(model, prob, fb))
    with pytest.raises(_RUNTIME, match="params.*NaN or inf"):
        jax.block_until_ready(jax.jit(lambda m, p: pde.nsm_loss(m, prob, p))(model, fb))
    with pytest.raises(_RUNTIME, match="params.*NaN or inf"):
        jax.block_until_ready(jax.vmap(prob.solve)(fb))
    with pytest.raises(_RUNTIME, match="params.*NaN or inf"):
        jax.block_until_ready(prob.loss(jnp.zeros_like(f), fb))
    fno = pde.FNO(2, 1, 1, width=4, depth=1, modes=2, key=jax.random.key(0))
    with pytest.raises(_RUNTIME, match="params.*NaN or inf"):
        jax.block_until_ready(pde.fno_predict(fno, prob, fb, (16, 16)))
    with pytest.raises(_RUNTIME, match="u0.*NaN or inf"):
        jax.block_until_ready(pde.solve_reaction_diffusion(jnp.full(8, bad), 0.1, 1.0, 0.1, 2, 2))
    with pytest.raises(_RUNTIME, match="w0.*NaN or inf"):
        jax.block_until_ready(pde.solve_navier_stokes(jnp.full((8, 8), bad), 0.1, 0.1, 2, 2))
    # finite input passes through unchanged
    assert bool(jnp.all(jnp.isfinite(pde.nsm_predict(model, prob, f))))


def test_complex_and_half_precision_rejected(poisson):
    prob, model, f = poisson
    b = pde.Fourier(9)
    with pytest.raises(TypeError, match="`coeffs` must be real"):
        b.derivative(jnp.ones(9, jnp.complex64))
    with pytest.raises(TypeError, match="`values` must be real"):
        b.forward(jnp.ones(9, jnp.complex64))
    with pytest.raises(TypeError, match="`params` must be real"):
        prob.residual(jnp.zeros((9, 9)), f[0].astype(jnp.complex64))
    with pytest.raises(TypeError, match="float16.*float32 or float64"):
        pde.Chebyshev(8).inverse(jnp.ones(8, jnp.float16))
    with pytest.raises(TypeError, match="`params` has dtype float16"):
        pde.nsm_predict(model, prob, f.astype(jnp.float16))
    with pytest.raises(TypeError, match="`w0` has dtype bfloat16"):
        pde.solve_navier_stokes(jnp.ones((8, 8), jnp.bfloat16), 0.1, 0.1, 2, 2)
    with pytest.raises(TypeError, match="`u0` must be real"):
        pde.solve_reaction_diffusion(jnp.ones(8, jnp.complex64), 0.1, 1.0, 0.1, 2, 2)


def test_wrong_shapes_name_the_argument(poisson):
    prob, model, f = poisson
    with pytest.raises(ValueError, match="`params` must have trailing shape"):
        prob.residual(jnp.zeros((9, 9)), jnp.zeros((9, 7)))
    with pytest.raises(ValueError, match="`u` must have trailing shape"):
        prob.loss(jnp.zeros((2, 9, 8)), f)
    with pytest.raises(ValueError, match="batch size of `u`"):
        prob.loss(jnp.zeros((3, 9, 9)), f)
    with pytest.raises(ValueError, match="`params` must have trailing shape"):
        pde.nsm_predict(model, prob, jnp.zeros((2, 7, 9)))
    with pytest.raises(ValueError, match="`params` must be a batch"):
        pde.nsm_predict(model, prob, jnp.zeros(()))
    d = pde.PoissonDirichlet(n=8)
    with pytest.raises(ValueError, match="`params` must have trailing shape"):
        d.solve(jnp.zeros((8, 9)))
    tb = pde.TensorBasis(pde.Fourier(5), pde.Chebyshev(6))
    with pytest.raises(ValueError, match="`left` \\(boundary value\\).*\\(5,\\)"):
        tb.enforce_bc(jnp.zeros((5, 6)), 1, "dirichlet", left=jnp.zeros(4))
    with pytest.raises(ValueError, match="`right` \\(boundary value\\)"):
        pde.Chebyshev(6).enforce_bc(jnp.zeros((3, 6)), right=jnp.zeros((2,)))
    # a boundary value per Fourier coefficient broadcasts fine
    out = tb.enforce_bc(jnp.zeros((5, 6)), 1, "dirichlet", left=jnp.arange(5.0))
    np.testing.assert_allclose(tb.bases[1].boundary_values(out)[0], np.arange(5.0), atol=1e-5)


def test_periodic_poisson_nonzero_mean_source_raises(poisson):
    prob, _, f = poisson
    with pytest.raises(_RUNTIME, match="non-zero mean"):
        jax.block_until_ready(prob.solve(f.at[0, 0, 0].set(0.3)))
    # rounding-level means (a zero-mean field through a float32 grid transform) are accepted
    g = prob.basis.forward(prob.basis.inverse(f, (16, 16)))
    assert bool(jnp.all(jnp.isfinite(prob.solve(g))))


def test_navier_stokes_courant_guard():
    x = np.arange(32) / 32
    w0 = jnp.asarray(np.sin(2 * np.pi * x)[:, None] * np.cos(4 * np.pi * x)[None, :] * 20.0)
    # |u| + |v| ~ 20 / (2 pi) -> Courant number dt * 3.2 * 32 >> 1 for dt = 0.1
    with pytest.raises(_RUNTIME, match="Courant number.*increase `steps`"):
        jax.block_until_ready(pde.solve_navier_stokes(w0, 1e-3, 1.0, 10, 2, forcing=None))
    # the same flow with enough steps passes (and the guard can be switched off)
    out = pde.solve_navier_stokes(w0, 1e-3, 1.0, 400, 2, forcing=None)
    assert bool(jnp.all(jnp.isfinite(out)))
    with pytest.raises(ValueError, match="max_cfl"):
        pde.solve_navier_stokes(w0, 1e-3, 1.0, 10, 2, max_cfl=0.0)


def test_residual_vocabulary_names_misplaced_and_traced_arguments():
    basis = pde.TensorBasis(pde.Fourier(7), pde.Chebyshev(5))
    c = jnp.ones(basis.shape)
    with pytest.raises(TypeError, match=r"relative_l2: `true_coeffs` must be a coefficient array.*argument order"):
        pde.relative_l2(c, basis, c)
    with pytest.raises(TypeError, match="`order` must be a Python int"):
        pde.derivative(c, basis, 0, jnp.int32(1))
    with pytest.raises(TypeError, match="`axis` must be a Python int"):
        jax.jit(lambda a: pde.derivative(c, basis, a))(0)
    with pytest.raises(TypeError, match="`a` must be a coefficient array"):
        pde.product(basis, c, basis)
    # the right order still works, and a zero reference is an error, not inf
    assert float(pde.relative_l2(2 * c, c, basis)) == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(Exception, match="zero norm"):
        jax.block_until_ready(pde.relative_l2(c, jnp.zeros_like(c), basis))


def test_relative_error_checks_shapes_and_zero_reference():
    ref = jnp.ones((2, 4))
    assert float(pde.relative_error(2 * ref, ref)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="`pred` has shape"):
        pde.relative_error(jnp.ones((2, 3)), ref)
    with pytest.raises(Exception, match="zero norm"):
        jax.block_until_ready(pde.relative_error(ref, ref.at[1].set(0.0)))


def test_eager_runtime_errors_put_the_message_first():
    """Called eagerly (concrete values), run-time checks raise a plain ValueError whose first line is the message;
    under jit they still raise (eqx.error_if) with the message in the text."""
    zeros, ones = jnp.zeros((2, 3)), jnp.ones((2, 3))
    with pytest.raises(ValueError) as info:
        pde.relative_error(ones, zeros)
    assert str(info.value).splitlines()[0] == "relative_error: a sample of `ref` has zero norm"
    basis = pde.Fourier(5)
    with pytest.raises(ValueError) as info:
        pde.relative_l2(jnp.ones(5), jnp.zeros(5), basis)
    assert str(info.value).splitlines()[0].startswith("relative_l2: `true_coeffs` has zero norm")
    with pytest.raises(_RUNTIME, match="zero norm"):
        jax.block_until_ready(jax.jit(pde.relative_error)(ones, zeros))
