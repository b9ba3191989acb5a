"""Navier-Stokes vorticity solver: Taylor-Green decay, second order in time, spectral in space; NS problem pieces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsciml import pde


def _grid(n):
    g = np.arange(n) / n
    return np.meshgrid(g, g, indexing="ij")


def test_taylor_green_decay_second_order(x64):
    """w0 = sin(2 pi x) sin(2 pi y) is a steady Euler flow: w = w0 exp(-8 pi^2 nu t); CN error O(dt^2)."""
    X, Y = _grid(16)
    w0 = jnp.asarray(np.sin(2 * np.pi * X) * np.sin(2 * np.pi * Y))
    exact = w0 * np.exp(-0.05 * 8 * np.pi**2)
    errs = [
        float(jnp.max(jnp.abs(pde.solve_navier_stokes(w0, 0.05, 1.0, s, 2, forcing=None)[..., -1] - exact)))
        for s in (10, 20, 40)
    ]
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all((orders > 1.8) & (orders < 2.3)), (errs, orders)


def test_time_order_with_forcing_and_advection(x64):
    prob = pde.NavierStokes2D(nu=1e-2, n=9)
    w0 = prob.space.inverse(prob.sample(jax.random.key(0), 1)[0], (16, 16))
    ref = pde.solve_navier_stokes(w0, 1e-2, 0.5, 320, 2)[..., -1]
    errs = [float(jnp.max(jnp.abs(pde.solve_navier_stokes(w0, 1e-2, 0.5, s, 2)[..., -1] - ref))) for s in (10, 20, 40)]
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all((orders > 1.7) & (orders < 2.5)), (errs, orders)


def test_space_convergence(x64):
    prob = pde.NavierStokes2D(nu=1e-2, n=9)
    c = prob.sample(jax.random.key(1), 1)[0]

    def final(n):
        return pde.solve_navier_stokes(prob.space.inverse(c, (n, n)), 1e-2, 0.5, 20, 2)[:: n // 8, :: n // 8, -1]

    ref = final(64)
    e16, e32 = (float(jnp.max(jnp.abs(final(n) - ref))) for n in (16, 32))
    assert e32 < 1e-7 and e16 > 10 * e32, (e16, e32)


def test_problem_residual_and_constraint(x64):
    prob = pde.NavierStokes2D(nu=1e-2, n=9, nt=5, t_final=0.2, ref_steps=200)  # unforced
    w0 = prob.sample(jax.random.key(2), 1)[0]
    raw = jax.random.normal(jax.random.key(3), (1, 9, 9, 5))
    w = prob.constrain(raw, w0)
    xs = prob.space.uniform_grid(10)
    np.testing.assert_allclose(
        prob.basis.evaluate_grid(w, [*xs, np.array([0.0])])[..., 0], prob.space.evaluate_grid(w0, xs), atol=1e-12
    )
    # reference at the Lobatto times -> coefficients; its spectral residual is far below a perturbed one's
    w0g = prob.space.inverse(w0, (32, 32))
    cols = [w0g] + [
        pde.solve_navier_stokes(w0g, 1e-2, float(t), 40, 2, forcing=None)[..., -1]
        for t in prob.basis.bases[2].grid()[1:]
    ]
    vals = jnp.stack(cols, -1)
    coef = prob.basis.forward(vals)
    r_ok, r_bad = prob.loss(coef, w0), prob.loss(coef * 1.05, w0)
    # (the floor is the truncation of the advected field to 9 x 9 x 5 coefficients)
    assert float(r_ok) < 0.1 * float(r_bad), (r_ok, r_bad)
    np.testing.assert_allclose(
        prob.reference(w0, (32, 32, 2))[..., -1],
        pde.solve_navier_stokes(w0g, 1e-2, 0.2, 200, 2, forcing=None)[..., -1],
        atol=1e-6,
    )


def test_bad_parameters():
    with pytest.raises(ValueError, match="viscosity"):
        pde.NavierStokes2D(nu=0.0)
    with pytest.raises(ValueError, match="viscosity"):
        pde.solve_navier_stokes(jnp.ones((8, 8)), -1e-3, 1.0, 4, 2)
    with pytest.raises(ValueError, match="square"):
        pde.solve_navier_stokes(jnp.ones((8, 6)), 1e-3, 1.0, 4, 2)
