import jax
import jax.numpy as jnp

import jaxsciml

from .helpers import assert_transformable


def test_version():
    assert isinstance(jaxsciml.__version__, str) and jaxsciml.__version__.count(".") >= 2


def test_fake_devices():
    assert len(jax.devices()) >= 4


def test_x64_fixture(x64):
    assert jnp.zeros(()).dtype == jnp.float64


def test_float32_default():
    assert jnp.zeros(()).dtype == jnp.float32


def test_assert_transformable_catches_bad_grad(x64):
    assert_transformable(lambda x: jnp.sin(x) * x, jnp.linspace(0.0, 1.0, 5))

    @jax.custom_vjp
    def wrong(x):
        return jnp.sin(x)

    wrong.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (2.0 * g * jnp.cos(x),))
    try:
        assert_transformable(wrong, jnp.linspace(0.0, 1.0, 5))
    except AssertionError:
        return
    raise AssertionError("a wrong gradient was not detected")
