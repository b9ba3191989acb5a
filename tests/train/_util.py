"""Small synthetic regression problem shared by the train tests."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

IN, OUT, WIDTH, DEPTH = 3, 2, 16, 2


def make_model(seed: int = 0) -> eqx.nn.MLP:
    return eqx.nn.MLP(IN, OUT, WIDTH, DEPTH, activation=jax.nn.tanh, key=jax.random.key(seed))


def target(x):
    return jnp.stack([jnp.sin(x[..., 0]) * x[..., 1], jnp.cos(x[..., 2])], axis=-1)


@functools.partial(jax.jit, static_argnums=1)
def make_batch(step, batch_size: int = 32):
    """Deterministic batch for a step index (a `data(step)` callable for `fit`); jitted to keep the tests fast."""
    x = jax.random.normal(jax.random.fold_in(jax.random.key(42), step), (batch_size, IN))
    return x, target(x)


@functools.partial(jax.jit, static_argnums=1)
def make_batch_from_key(k, batch_size: int = 32):
    x = jax.random.normal(k, (batch_size, IN))
    return x, target(x)


def mse(model, batch):
    x, y = batch
    pred = jax.vmap(model)(x)
    return jnp.mean((pred - y) ** 2)


def mse_aux(model, batch):
    x, y = batch
    pred = jax.vmap(model)(x)
    err = (pred - y) ** 2
    return jnp.mean(err), {"max_err": jnp.max(err), "pred": pred}


def params_of(model):
    return jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))


# One optimiser object shared by the tests, so that fit's compiled-step cache is reused between tests.
ADAM = optax.adam(1e-2)
