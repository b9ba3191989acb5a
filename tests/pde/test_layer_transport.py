"""What one spectral layer can represent: a translation of a periodic function (the map transport needs).

A real weight per coefficient index scales the cosine and sine parts of a Fourier mode separately and so cannot shift
a function; the complex per-frequency weights of `SpectralLayer` on periodic axes can, exactly: with weights
``exp(-i k s)`` the layer maps the coefficients of ``u(x)`` to those of ``u(x - s)``. Checked against evaluating the
expansion at shifted points, in float64 (tolerance 1e-12: both sides are exact up to round-off).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsciml import pde


def _shift_layer(bases, shifts):
    basis = pde.TensorBasis(*bases)
    fourier = tuple(i for i, b in enumerate(bases) if isinstance(b, pde.Fourier))
    layer = pde.SpectralLayer(1, 1, basis.shape, jax.random.key(0), fourier_axes=fourier)
    shape = layer.kernel.shape[:-2]
    phase = np.zeros(shape)
    for i, (b, s) in enumerate(zip(bases, shifts)):
        if s is None:
            continue
        kmax = b.n // 2
        k = np.arange(0, kmax + 1) if i == fourier[-1] else np.arange(-kmax, kmax + 1)
        along = [1] * len(shape)
        along[i] = -1
        phase = phase - (2 * np.pi * k / b.length * s).reshape(along)
    layer = eqx.tree_at(
        lambda m: (m.kernel, m.kernel_imag, m.linear),
        layer,
        (jnp.asarray(np.cos(phase))[..., None, None], jnp.asarray(np.sin(phase))[..., None, None], jnp.zeros((1, 1))),
    )
    return basis, layer


def _shifted_reference(bases, basis, coeffs, shifts):
    grids = [b.grid() for b in bases]
    vals = np.asarray(coeffs)
    for ax, (b, g, s) in enumerate(zip(bases, grids, shifts)):
        mat = np.asarray(b.basis_matrix(jnp.asarray(g - (s or 0.0))))
        vals = np.moveaxis(np.tensordot(mat, np.moveaxis(vals, ax, 0), axes=([1], [0])), 0, ax)
    return np.asarray(basis.forward(jnp.asarray(vals)))


@pytest.mark.parametrize(
    "bases, shifts",
    [
        ((pde.Fourier(9),), (0.13,)),
        ((pde.Fourier(9), pde.Fourier(7)), (0.13, -0.31)),
        ((pde.Fourier(9), pde.Chebyshev(6, (0.0, 1.0))), (0.21, None)),
        ((pde.Chebyshev(5, (0.0, 1.0)), pde.Fourier(11, (0.0, 2.0))), (None, 0.4)),
    ],
)
def test_layer_represents_a_translation(x64, bases, shifts):
    basis, layer = _shift_layer(bases, shifts)
    c = jax.random.normal(jax.random.key(1), (1,) + basis.shape)
    out = np.asarray(layer(c)[0])
    ref = _shifted_reference(bases, basis, c[0], shifts)
    np.testing.assert_allclose(out, ref, atol=1e-12)
    # a real weight per index (the old layer) cannot: the diagonal map that fits this input exactly fails on another
    diag = np.asarray(ref) / np.asarray(c[0])
    c2 = jax.random.normal(jax.random.key(2), (1,) + basis.shape)
    ref2 = _shifted_reference(bases, basis, c2[0], shifts)
    assert np.max(np.abs(diag * np.asarray(c2[0]) - ref2)) > 1e-2


def test_complex_layer_matches_old_layout_without_periodic_axes(x64):
    """With no periodic axes the layer is the real per-index kernel it always was (old checkpoints' maths)."""
    layer = pde.SpectralLayer(3, 2, (4, 3), jax.random.key(3))
    assert layer.kernel_imag is None and layer.index_mix == ()
    v = jax.random.normal(jax.random.key(4), (3, 6, 5))
    ref = np.einsum("iab,abio->oab", np.asarray(v[:, :4, :3]), np.asarray(layer.kernel))
    ref = np.pad(ref, [(0, 0), (0, 2), (0, 2)]) + np.einsum("io,iab->oab", np.asarray(layer.linear), np.asarray(v))
    ref[:, 0, 0] += np.asarray(layer.bias)
    np.testing.assert_allclose(np.asarray(layer(v)), ref, atol=1e-12)


def test_layer_axis_arguments_are_checked():
    with pytest.raises(ValueError, match="fourier_axes"):
        pde.SpectralLayer(2, 2, (4,), jax.random.key(0), fourier_axes=(1,))
    with pytest.raises(ValueError, match="mix_axes"):
        pde.SpectralLayer(2, 2, (4, 3), jax.random.key(0), fourier_axes=(0,), mix_axes=(0,))
    layer = pde.SpectralLayer(2, 2, (9,), jax.random.key(0), fourier_axes=(0,))
    with pytest.raises(ValueError, match="fewer than"):
        layer(jnp.ones((2, 7)))
