"""`pde.default_optimizer`: its methods (Adam, SOAP), the schedule, and bad input."""

import jax
import jax.numpy as jnp
import optax
import pytest

from jaxsciml import pde


@pytest.mark.parametrize("method", ["adam", "soap"])
def test_default_optimizer_methods_minimise_a_quadratic(method):
    """Both methods drive an ill-conditioned quadratic in a matrix parameter (SOAP's Kronecker path) and a vector
    (its Adam fallback) down by orders of magnitude."""
    scales = jnp.array([1.0, 10.0, 100.0])
    target = {"w": jnp.arange(12.0).reshape(3, 4) / 10, "b": jnp.ones(3)}

    def loss(p):
        return jnp.sum(scales[:, None] * (p["w"] - target["w"]) ** 2) + jnp.sum(scales * (p["b"] - target["b"]) ** 2)

    steps = 400
    opt = pde.default_optimizer(steps, 3e-2, method=method)
    params = jax.tree_util.tree_map(jnp.zeros_like, target)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        g = jax.grad(loss)(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state

    l0 = float(loss(params))
    for _ in range(steps):
        params, state = step(params, state)
    assert float(loss(params)) < 1e-3 * l0


def test_default_optimizer_schedule_is_the_documented_decay():
    """lr decays exponentially from ``lr`` to ``final_factor * lr`` over ``steps``: with plain SGD-like scaling
    removed, Adam's first update of a unit gradient is ``-lr`` (bias-corrected), its last ``-final_factor * lr``."""
    opt = pde.default_optimizer(10, 1e-2, 0.1)
    p = jnp.zeros(())
    state = opt.init(p)
    upd, state = opt.update(jnp.ones(()), state, p)
    assert jnp.allclose(upd, -1e-2, rtol=1e-5)
    for _ in range(9):
        upd, state = opt.update(jnp.ones(()), state, p)
    assert jnp.allclose(upd, -1e-2 * 0.1 ** (9 / 10), rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"steps": 10, "lr": -1.0}, "lr"),
        ({"steps": 10, "lr": float("nan")}, "lr"),
        ({"steps": 10, "final_factor": 0.0}, "final_factor"),
        ({"steps": 10, "method": "sgd"}, "method"),
    ],
)
def test_default_optimizer_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pde.default_optimizer(**kwargs)
