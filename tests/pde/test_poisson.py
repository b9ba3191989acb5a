"""Poisson problems: reference solvers vs manufactured solutions, spectral residuals, GRF samplers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsciml import pde


def test_periodic_reference_manufactured(x64):
    prob = pde.PoissonPeriodic(n=33)
    X, Y = np.meshgrid(*prob.basis.grid(), indexing="ij")
    k = 2 * np.pi
    u = np.sin(k * X) * np.cos(2 * k * Y) + 0.3 * np.cos(3 * k * X + k * Y)
    f = 5 * k**2 * np.sin(k * X) * np.cos(2 * k * Y) + 0.3 * 10 * k**2 * np.cos(3 * k * X + k * Y)
    fc = prob.basis.forward(f)
    np.testing.assert_allclose(
        prob.reference(fc, (40, 36)), prob.basis.evaluate_uniform(prob.basis.forward(u), (40, 36)), atol=1e-12
    )
    # the exact solution has zero spectral residual; a perturbed one does not
    uc = prob.solve(fc)
    assert float(prob.loss(uc, fc)) < 1e-20
    assert float(prob.loss(1.01 * uc, fc)) > 1e-6


def test_periodic_exponential_convergence(x64):
    """u = exp(sin 2 pi x) cos(2 pi y) minus its mean: error of the spectral solve decays exponentially in n."""

    def u_f(x, y):
        s, c = np.sin(2 * np.pi * x), np.cos(2 * np.pi * x)
        e = np.exp(s)
        uxx = (2 * np.pi) ** 2 * (c**2 - s) * e * np.cos(2 * np.pi * y)
        u = e * np.cos(2 * np.pi * y)
        return u, -(uxx - (2 * np.pi) ** 2 * u)

    xe = np.linspace(0, 1, 17, endpoint=False)
    Xe, Ye = np.meshgrid(xe, xe, indexing="ij")
    exact = u_f(Xe, Ye)[0]
    errs = []
    for n in (7, 11, 15, 21):
        prob = pde.PoissonPeriodic(n=n)
        X, Y = np.meshgrid(*prob.basis.grid(), indexing="ij")
        sol = prob.basis.evaluate_grid(prob.solve(prob.basis.forward(u_f(X, Y)[1])), [xe, xe])
        errs.append(float(np.max(np.abs(sol - exact))))
    assert errs[-1] < 1e-10 and all(b < a / 10 for a, b in zip(errs[:-2], errs[1:-1])), errs


def test_dirichlet_reference_spectral_convergence(x64):
    def u_f(x, y):
        u = np.sin(np.pi * x) * np.sin(2 * np.pi * y) * np.exp(x)
        uxx = np.exp(x) * np.sin(2 * np.pi * y) * ((1 - np.pi**2) * np.sin(np.pi * x) + 2 * np.pi * np.cos(np.pi * x))
        return u, -(uxx - 4 * np.pi**2 * u)

    errs = []
    for m in (8, 12, 16, 24):
        g = pde.Chebyshev(m).grid()
        X, Y = np.meshgrid(g, g, indexing="ij")
        u, f = u_f(X, Y)
        errs.append(float(np.max(np.abs(pde.solve_poisson_dirichlet(jnp.asarray(f)) - u))))
    assert errs[-1] < 1e-10 and errs[0] > errs[1] > errs[2], errs


def test_dirichlet_problem_constraint_and_residual(x64):
    prob = pde.PoissonDirichlet(n=16, length_scale=0.3)
    f = prob.sample(jax.random.key(0), 2)
    raw = jax.random.normal(jax.random.key(1), (2, 1, 16, 16))
    u = jax.vmap(prob.constrain)(raw, f)
    g = np.linspace(0, 1, 9)
    vals = prob.basis.evaluate_grid(u, [g, g])
    np.testing.assert_allclose(vals[:, 0], 0, atol=1e-12)
    np.testing.assert_allclose(vals[:, :, -1], 0, atol=1e-12)
    # reference solution: its projection onto the basis has a small spectral residual
    fine, uref = prob.solve(f[0])
    up = uref[:16, :16]
    up = prob.constrain(up[None], f[0])
    # (not zero: the top two Chebyshev modes of f per axis cannot be matched by -Laplace(u) of degree n - 3; the floor
    # is the tail of f's spectrum, ~1e-4 relative here)
    floor = float(prob.loss(up, f[0]))
    assert floor < 1e-3 * float(pde.squared_norm(f[0], prob.basis))
    assert float(prob.loss(0.95 * up, f[0])) > 3 * floor
    ref = prob.reference(f[0], (9, 9))
    np.testing.assert_allclose(ref[0], 0, atol=1e-12)


def test_grf_statistics(x64):
    tb = pde.TensorBasis(pde.Fourier(31), pde.Fourier(31))
    f = pde.gaussian_random_field(jax.random.key(0), tb, 0.1, shape=(400,))
    v = tb.inverse(f, 32)
    np.testing.assert_allclose(jnp.var(v), 1.0, rtol=0.1)  # unit pointwise variance (sampling error ~ 3%)
    # correlation at lag r matches exp(-r^2 / (2 l^2)) for the squared-exponential kernel
    lag = 3  # r = 3/32
    corr = jnp.mean(v * jnp.roll(v, lag, axis=-1)) / jnp.mean(v * v)
    np.testing.assert_allclose(corr, np.exp(-((lag / 32) ** 2) / (2 * 0.1**2)), atol=0.05)
    fz = pde.gaussian_random_field(jax.random.key(1), tb, 0.1, shape=(3,), zero_mean=True)
    np.testing.assert_allclose(fz[:, 0, 0], 0.0)
    with pytest.raises(ValueError, match="length_scale"):
        pde.gaussian_random_field(jax.random.key(1), tb, 0.0)
    with pytest.raises(ValueError, match="smoothness"):
        pde.gaussian_random_field(jax.random.key(1), tb, 0.1, smoothness=-1.0)


def test_fd_grid_residual_small_for_reference(x64):
    prob = pde.PoissonPeriodic(n=15, length_scale=0.3)
    f = prob.sample(jax.random.key(0), 1)[0]
    for m, tol in ((32, 0.2), (128, 0.015)):  # FD error O(h^2): ~16x smaller at 4x resolution
        u = prob.reference(f, (m, m))
        r = prob.grid_residual(u, f, (m, m))
        rel = float(jnp.sqrt(jnp.mean(r**2) / jnp.mean(prob.grid_input(f, (m, m)) ** 2)))
        assert rel < tol, (m, rel)
