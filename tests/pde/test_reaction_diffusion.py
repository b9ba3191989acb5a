"""Reaction-diffusion: ETDRK4 reference (analytic solutions, 4th order in time), constraints and spectral residual."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsciml import pde


def test_heat_limit_exact(x64):
    """rho = 0: u = 0.5 + 0.3 exp(-nu (6 pi)^2 t) sin(6 pi x) is reproduced to round-off (the linear part is exact)."""
    x = np.arange(64) / 64
    u0 = 0.5 + 0.3 * np.sin(6 * np.pi * x)
    sol = pde.solve_reaction_diffusion(jnp.asarray(u0), 0.01, 0.0, 1.0, 10, 3)
    for j, t in enumerate((0.0, 0.5, 1.0)):
        exact = 0.5 + 0.3 * np.exp(-0.01 * (6 * np.pi) ** 2 * t) * np.sin(6 * np.pi * x)
        np.testing.assert_allclose(sol[:, j], exact, atol=1e-13)


def test_logistic_limit_fourth_order(x64):
    """Constant data: u(t) = c e^{rho t} / (1 - c + c e^{rho t}); ETDRK4 error ratio ~16 per halving of dt."""
    c, rho = 0.1, 5.0
    exact = c * np.exp(rho) / (1 - c + c * np.exp(rho))
    errs = [
        abs(float(pde.solve_reaction_diffusion(jnp.full(8, c), 0.01, rho, 1.0, s, 2)[0, -1]) - exact)
        for s in (8, 16, 32)
    ]
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all((orders > 3.7) & (orders < 4.5)), (errs, orders)


def test_spatial_spectral_convergence(x64):
    prob = pde.ReactionDiffusion(nu=0.02, rho=5.0, nx=31, nt=8)  # the paper's rough initial conditions
    u0 = prob.sample(jax.random.key(0), 1)[0]

    def final(n):  # solution at t = 1 on n points, sampled at 16 common points
        return pde.solve_reaction_diffusion(prob.space.inverse(u0, n), 0.02, 5.0, 1.0, 200, 2)[:: n // 16, -1]

    ref = final(256)
    e32, e64 = (float(jnp.max(jnp.abs(final(n) - ref))) for n in (32, 64))
    assert e64 < 1e-8 and e32 > 10 * e64, (e32, e64)


def test_problem_constraint_residual_and_reference(x64):
    prob = pde.ReactionDiffusion(
        nu=0.05, rho=5.0, nx=31, nt=8, length_scale=0.25, ref_points=64, ref_steps=200, kernel="squared_exponential"
    )
    u0 = prob.sample(jax.random.key(0), 2)
    v = prob.space.inverse(u0, 64)
    np.testing.assert_allclose(jnp.min(v, -1), 0.0, atol=0.05)  # rescaled to [0, 1] on the coefficient grid
    np.testing.assert_allclose(jnp.max(v, -1), 1.0, atol=0.05)
    raw = jax.random.normal(jax.random.key(1), (2, 1, 31, 8))
    u = jax.vmap(prob.constrain)(raw, u0)
    x = prob.basis.uniform_grid((40, 5))[0]
    at0 = prob.basis.evaluate_grid(u, [x, np.array([0.0])])[..., 0]
    np.testing.assert_allclose(at0, prob.space.evaluate(u0, x), atol=1e-12)  # initial condition built in
    # reference values at the Chebyshev-Lobatto times -> coefficients: tiny spectral residual vs a wrong solution
    x64pts = prob.space.inverse(u0[0], 64)
    cols = [x64pts] + [
        pde.solve_reaction_diffusion(x64pts, 0.05, 5.0, float(t), 60, 2)[:, -1] for t in prob.basis.bases[1].grid()[1:]
    ]
    coef = prob.basis.forward(jnp.stack(cols, axis=-1))
    r_ok, r_bad = prob.loss(coef, u0[0]), prob.loss(coef * 1.05, u0[0])
    assert float(r_ok) < 1e-3 * float(r_bad), (r_ok, r_bad)
    # reference() on a uniform grid agrees with the direct solve at t = T
    ref = prob.reference(u0[0], (64, 3))
    np.testing.assert_allclose(ref[:, -1], cols[-1], atol=1e-9)
    np.testing.assert_allclose(ref[:, 0], x64pts, atol=1e-12)


def test_bad_parameters():
    with pytest.raises(ValueError, match="`nu` must be a positive"):
        pde.ReactionDiffusion(nu=0.0)
    with pytest.raises(ValueError, match="`nu` must be a positive"):
        pde.solve_reaction_diffusion(jnp.ones(8), -1.0, 5.0, 1.0, 4, 2)
    with pytest.raises(ValueError, match="`t_final`"):
        pde.ReactionDiffusion(t_final=-1.0)
    with pytest.raises(ValueError, match="multiple of saves - 1"):
        pde.solve_reaction_diffusion(jnp.ones(8), 0.1, 5.0, 1.0, 5, 3)
