"""The minimal path for a user's PDE (pde.Problem + constraints): viscous Burgers on Fourier x Chebyshev against an
independent method-of-lines solve, constraint helpers checked exactly, and equivalence with the shipped problems."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsciml import pde
from jaxsciml.train import fit

NU = 0.02


def _burgers(n=15, nt=12, t_final=0.5):
    basis = pde.TensorBasis(pde.Fourier(n), pde.Chebyshev(nt, (0.0, t_final)))
    space = basis.bases[0]

    def residual(u, u0):  # u_t + u u_x - nu u_xx
        ux = pde.derivative(u, basis, 0)
        adv = pde.pointwise(lambda w, wx: w * wx, basis, u, ux)
        return pde.derivative(u, basis, 1) + adv - NU * pde.derivative(u, basis, 0, 2)

    def sample(key, batch):
        return 0.5 * pde.gaussian_random_field(key, space, 0.6, shape=(batch,), kernel="periodic")

    return pde.Problem(basis, residual, sample, [pde.InitialValue(axis=1)], time_axis=1)


def _method_of_lines(u0_values, times):
    """Independent reference: pseudo-spectral Burgers (2/3 dealiased) integrated by diffrax Tsit5 (rtol 1e-10 in
    float64, 1e-6 in float32)."""
    m = u0_values.shape[-1]
    tol = 1e-10 if u0_values.dtype == jnp.float64 else 1e-6
    k = 2 * np.pi * np.fft.rfftfreq(m, 1.0 / m)
    mask = np.fft.rfftfreq(m, 1.0 / m) <= m / 3

    def f(t, u, args):
        uh = jnp.fft.rfft(u)
        ux = jnp.fft.irfft(1j * k * uh, n=m)
        uxx = jnp.fft.irfft(-(k**2) * uh, n=m)
        adv = jnp.fft.irfft(jnp.fft.rfft(u * ux) * mask, n=m)
        return -adv + NU * uxx

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(f), diffrax.Tsit5(), 0.0, float(times[-1]), 1e-3, u0_values,
        saveat=diffrax.SaveAt(ts=jnp.asarray(times)),
        stepsize_controller=diffrax.PIDController(rtol=tol, atol=tol * 1e-2), max_steps=100_000,
    )  # fmt: skip
    return sol.ys  # (len(times), m)


def test_burgers_through_problem(x64):
    prob = _burgers(n=31)
    assert prob.in_channels == 2 and prob.param_shape == (31,)
    u0 = prob.sample(jax.random.key(0), 1)[0]
    # the time channel is the coordinate t, the first channel u0 constant in t
    x = np.linspace(0, 1, 7, endpoint=False)
    t = np.array([0.0, 0.13, 0.5])
    inp = prob.model_input(u0)
    np.testing.assert_allclose(prob.basis.evaluate_grid(inp[1], [x, t]), np.broadcast_to(t, (7, 3)), atol=1e-12)
    np.testing.assert_allclose(
        prob.basis.evaluate_grid(inp[0], [x, t]), np.repeat(prob.basis.bases[0].evaluate(u0, x)[:, None], 3, 1)
    )
    # the initial value holds exactly for any network output
    u = prob.constrain(jax.random.normal(jax.random.key(1), (1, 31, 12)), u0)
    np.testing.assert_allclose(prob.basis.evaluate_grid(u, [x, t[:1]])[:, 0], prob.basis.bases[0].evaluate(u0, x))
    # the reference at the Chebyshev-Lobatto times has a tiny spectral residual; a perturbed one does not
    m = 64
    ys = _method_of_lines(prob.basis.bases[0].inverse(u0, m), prob.basis.bases[1].grid())
    coef = prob.basis.forward(ys.T)
    r_ok, r_bad = prob.loss(coef, u0), prob.loss(coef * 1.02, u0)
    # measured 3e-8 vs 8e-5: the floor is the truncation of the steepening solution to 31 Fourier coefficients
    assert float(r_ok) < 2e-3 * float(r_bad), (r_ok, r_bad)


@pytest.mark.slow
def test_burgers_nsm_trains_with_fit():
    """A short NSM run through the minimal path with jaxsciml.train.fit: error vs the method-of-lines reference."""
    prob = _burgers(n=15, nt=8)
    # output_scale=1: the correction t v of the initial-value constraint is O(1) here; at the default 1e-3 the same
    # run stays at 43% error after 200 steps (u0 alone: 52%, 33% at output_scale=1)
    model = pde.NSM(
        prob.basis,
        prob.in_channels,
        1,
        width=16,
        depth=2,
        activation=jax.nn.gelu,
        key=jax.random.key(0),
        output_scale=1.0,
    )
    steps = 200
    res = fit(
        model,
        lambda m, p: pde.nsm_loss(m, prob, p),
        optax.adam(optax.exponential_decay(3e-3, steps, 0.1)),
        lambda k: prob.sample(k, 16),
        steps,
        key=jax.random.key(1),
        progress=False,
    )
    test = prob.sample(jax.random.key(9), 4)
    times = np.linspace(0, 0.5, 6)
    ref = jnp.stack([_method_of_lines(prob.basis.bases[0].inverse(p, 64), times).T[::4] for p in test])  # (4, 16, 6)
    u = pde.nsm_predict(res.model, prob, test)
    pred = prob.basis.evaluate_grid(u, [np.arange(16) / 16, times])
    err = float(pde.relative_error(pred, ref))
    # u0 alone (no dynamics learnt) is 52% off; measured 33% after these 200 steps (a weak bound: the short run only
    # has to learn some of the dynamics; the residual against the reference is checked in test_burgers_through_problem)
    base = float(pde.relative_error(jnp.repeat(ref[..., :1], 6, -1), ref))
    assert err < 0.8 * base, (err, base)


def test_constraints_exact(x64):
    tb = pde.TensorBasis(pde.Chebyshev(9, (0.0, 2.0)), pde.Chebyshev(8))
    raw = jax.random.normal(jax.random.key(0), (9, 8))
    g = np.linspace(-1, 1, 5)
    xs = np.array([0.0, 2.0])
    u = pde.Dirichlet(0, left=1.5, right=lambda p: p)(raw, -0.5, tb)
    np.testing.assert_allclose(tb.evaluate_grid(u, [xs, g]), [[1.5] * 5, [-0.5] * 5], atol=1e-12)
    u = pde.Neumann(1, left=0.0, right=2.0)(raw, None, tb)
    du = tb.evaluate_grid(tb.derivative(u, 1), [np.linspace(0, 2, 4), np.array([0.0, 1.0])])  # axis 1 on (0, 1)
    np.testing.assert_allclose(du, [[0.0, 2.0]] * 4, atol=1e-11)
    # initial value along a Chebyshev time axis, with a batch axis
    st = pde.TensorBasis(pde.Fourier(5), pde.Chebyshev(6, (1.0, 3.0)))
    v = jax.random.normal(jax.random.key(1), (3, 5, 6))
    u0 = jax.random.normal(jax.random.key(2), (3, 5))
    u = pde.initial_value(v, u0, st, axis=1)
    np.testing.assert_allclose(st.evaluate_grid(u, [g % 1, np.array([1.0])])[..., 0], st.bases[0].evaluate(u0, g % 1))
    # u - u0 = (t - 1) v' with v' = v minus its top time coefficient
    vt = v.at[..., -1].set(0.0)
    tt = np.array([1.7, 2.9])
    lhs = st.evaluate_grid(u, [g % 1, tt]) - st.bases[0].evaluate(u0, g % 1)[..., None]
    np.testing.assert_allclose(lhs, st.evaluate_grid(vt, [g % 1, tt]) * (tt - 1.0), atol=1e-12)
    np.testing.assert_allclose(st.evaluate_grid(pde.time_coordinate(st, 1), [g % 1, tt]), np.broadcast_to(tt, (5, 2)))
    # gauge
    per = pde.TensorBasis(pde.Fourier(5), pde.Fourier(5))
    assert float(pde.PeriodicGauge()(jnp.ones((5, 5)), None, per)[0, 0]) == 0.0


def test_shipped_problems_match_the_minimal_path(x64):
    """Periodic Poisson and reaction-diffusion rebuilt from functions give the shipped problems' losses."""
    pp = pde.PoissonPeriodic(n=9)
    mine = pde.Problem(pp.basis, lambda u, f: -pde.laplacian(u, pp.basis) - f, pp.sample, [pde.PeriodicGauge()])
    f = pp.sample(jax.random.key(0), 3)
    raw = jax.random.normal(jax.random.key(1), (3, 1, 9, 9))
    a = jax.vmap(mine.constrain)(raw, f)
    np.testing.assert_allclose(a, jax.vmap(pp.constrain)(raw, f), atol=1e-14)
    np.testing.assert_allclose(mine.loss(a, f), pp.loss(a, f), rtol=1e-13)

    rd = pde.ReactionDiffusion(nx=15, nt=6)
    b = rd.basis

    def rd_res(u, u0):
        return (
            pde.derivative(u, b, 1)
            - rd.nu * pde.derivative(u, b, 0, 2)
            - rd.rho * pde.pointwise(lambda w: w * (1 - w), b, u)
        )

    mine = pde.Problem(b, rd_res, rd.sample, [pde.InitialValue(1)], time_axis=1)
    u0 = rd.sample(jax.random.key(2), 2)
    raw = jax.random.normal(jax.random.key(3), (2, 1, 15, 6))
    np.testing.assert_allclose(jax.vmap(mine.model_input)(u0), jax.vmap(rd.model_input)(u0), atol=1e-14)
    u = jax.vmap(mine.constrain)(raw, u0)
    np.testing.assert_allclose(u, jax.vmap(rd.constrain)(raw, u0), atol=1e-14)
    np.testing.assert_allclose(mine.loss(u, u0), rd.loss(u, u0), rtol=1e-13)


def test_problem_errors():
    b = pde.TensorBasis(pde.Fourier(5), pde.Chebyshev(4))
    with pytest.raises(ValueError, match="time_axis needs a Chebyshev axis"):
        pde.Problem(b, lambda u, p: u, lambda k, n: None, time_axis=0)
    with pytest.raises(TypeError, match="`residual` must be a function"):
        pde.Problem(b, 3.0, lambda k, n: None)
    with pytest.raises(TypeError, match="constraint objects"):
        pde.Problem(b, lambda u, p: u, lambda k, n: None, constraints=["dirichlet"])
    prob = pde.Problem(b, lambda u, p: u, lambda k, n: jnp.zeros((n, 5)), time_axis=1)
    with pytest.raises(ValueError, match=r"`params` must have shape \(5,\)"):
        prob.model_input(jnp.zeros((5, 4)))
    with pytest.raises(NotImplementedError, match="reference"):
        prob.reference(jnp.zeros(5), (8, 4))
    with pytest.raises(NotImplementedError, match="grid"):
        prob.grid_input(jnp.zeros(5), (8, 4))
    with pytest.raises(ValueError, match="Dirichlet needs a Chebyshev axis"):
        pde.Dirichlet(0)(jnp.zeros((5, 4)), None, b)
    with pytest.raises(ValueError, match="`u0` must have shape"):
        pde.initial_value(jnp.zeros((5, 4)), jnp.zeros(4), b, 1)
    assert isinstance(prob, eqx.Module)
