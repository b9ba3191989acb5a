"""jax's CPU ``eigh`` calls LAPACK through scipy's OpenBLAS, whose worker threads thrash when the machine is loaded
(the same 128x128 ``eigh`` took 1-200 ms with 2 threads vs a steady 0.8 ms with 1); limit them for these tests."""

import jax.numpy as jnp
import pytest


@pytest.fixture(autouse=True, scope="module")
def _single_threaded_lapack():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    jnp.linalg.eigh(jnp.eye(2)).eigenvalues.block_until_ready()  # load scipy's OpenBLAS so the limit reaches it
    with threadpool_limits(limits=1):
        yield
