"""A jitted step of each pillar, run by tests/test_wheel.py against the installed wheel (outside the source tree)."""


def run():
    import jax
    import jax.numpy as jnp

    x = jax.jit(lambda a: a * 2.0)(jnp.ones(3))
    assert float(x.sum()) == 6.0
