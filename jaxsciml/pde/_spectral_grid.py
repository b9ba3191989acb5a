"""Grid values <-> truncated spectral coefficients, axis by axis: the transforms of the T1 and CNO baselines.

An axis is *periodic* (uniform grid ``x_j = j / n``, ``j = 0..n-1``; complex Fourier coefficients) or *bounded*
(uniform grid ``linspace(0, 1, n)``, endpoints included; the Chebyshev transform of the samples, a DCT-I). Along a
bounded axis the samples are read as values on the ``n``-point Chebyshev--Lobatto grid, as the NSM authors' "CNO" does
on its uniform PINN grid; on the uniform grid this is the cosine series ``v(t) = sum_k a_k cos(pi k t)`` (``a_k`` the
Chebyshev coefficients up to the sign ``(-1)^k``), so the transform is exact and invertible on any number of points.

Normalisation: coefficients do not depend on the number of grid points (Fourier: ``norm="forward"``, i.e. the mean over
the grid; Chebyshev: the coefficients of the interpolant), so truncated coefficients computed on one grid can be
inverted onto another: a band-limited function (``|k| < modes`` per periodic axis, degree ``< modes`` per bounded axis)
is reproduced exactly at any resolution.

Layout of the truncated coefficients ``(C, *kept)``: along the **last** periodic axis the frequencies ``0..m-1``
(``rfftn`` half spectrum); along the other periodic axes ``0..m-1, -(m-1)..-1`` (``2m - 1`` entries); along bounded
axes the degrees ``0..m-1``. Complex when there is a periodic axis, real otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._basis import Chebyshev
from ._tensor import TensorBasis

__all__ = ["periodic_axes", "kept_shape", "check_grid", "grid_forward", "grid_inverse", "grid_coordinates"]


def periodic_axes(axes: TensorBasis | Sequence[str], name: str = "axes") -> tuple[bool, ...]:
    """Per-axis periodicity from a :class:`TensorBasis` (Fourier = periodic) or strings ``"fourier"`` /
    ``"chebyshev"``."""
    if isinstance(axes, TensorBasis):
        return tuple(bool(b.periodic) for b in axes.bases)
    if isinstance(axes, str) or not isinstance(axes, Sequence) or not 1 <= len(axes) <= 3:
        raise ValueError(f"`{name}` must be a TensorBasis or 1 to 3 of 'fourier' / 'chebyshev', got {axes!r}")
    out = []
    for a in axes:
        if a not in ("fourier", "chebyshev"):
            raise ValueError(f"`{name}` entries must be 'fourier' or 'chebyshev', got {a!r}")
        out.append(a == "fourier")
    return tuple(out)


def modes_tuple(modes: int | Sequence[int], ndim: int, name: str = "modes") -> tuple[int, ...]:
    if isinstance(modes, int | np.integer) and not isinstance(modes, bool):
        modes = (int(modes),) * ndim
    modes = tuple(cast(Sequence[int], modes))  # an int was expanded above
    if len(modes) != ndim or any(isinstance(m, bool) or not isinstance(m, int | np.integer) or m < 1 for m in modes):
        raise ValueError(f"`{name}` must be a positive int or {ndim} positive ints, got {modes!r}")
    return tuple(int(m) for m in modes)


def _last_periodic(periodic: tuple[bool, ...]) -> int:
    return max((i for i, p in enumerate(periodic) if p), default=-1)


def kept_shape(periodic: tuple[bool, ...], modes: tuple[int, ...]) -> tuple[int, ...]:
    last = _last_periodic(periodic)
    return tuple(2 * m - 1 if p and i != last else m for i, (p, m) in enumerate(zip(periodic, modes)))


def min_points(periodic: tuple[bool, ...], modes: tuple[int, ...]) -> tuple[int, ...]:
    """Fewest grid points per axis: ``2m - 1`` on periodic axes (frequencies below Nyquist), ``max(m, 2)`` else."""
    return tuple(2 * m - 1 if p else max(m, 2) for p, m in zip(periodic, modes))


def check_grid(shape: Sequence[int], periodic: tuple[bool, ...], modes: tuple[int, ...], name: str = "x") -> None:
    for i, (n, need, p, m) in enumerate(zip(shape, min_points(periodic, modes), periodic, modes)):
        if n < need:
            kind = f"{m} Fourier modes" if p else f"{m} Chebyshev modes"
            raise ValueError(f"`{name}` has {n} grid points along axis {i}; {kind} need at least {need}")


def _index(periodic: tuple[bool, ...], modes: tuple[int, ...], shape: Sequence[int]) -> list[np.ndarray]:
    """Positions of the kept coefficients in the full (``rfftn`` / Chebyshev) coefficient array of ``shape``."""
    last = _last_periodic(periodic)
    idx = []
    for i, (p, m, n) in enumerate(zip(periodic, modes, shape)):
        if p and i != last:
            idx.append(np.concatenate([np.arange(m), np.arange(n - m + 1, n)]))
        else:
            idx.append(np.arange(m))
    return idx


def grid_forward(v: Array, periodic: tuple[bool, ...], modes: tuple[int, ...]) -> Array:
    """Values ``(C, *grid)`` -> truncated coefficients ``(C, *kept_shape)`` (see the module docstring)."""
    shape = v.shape[1:]
    for i, (p, m) in enumerate(zip(periodic, modes)):
        if not p:
            v = Chebyshev(max(m, 2)).forward(v, axis=i + 1)[(slice(None),) * (i + 1) + (slice(0, m),)]
    fa = tuple(i + 1 for i, p in enumerate(periodic) if p)
    if fa:
        v = jnp.fft.rfftn(v, axes=fa, norm="forward")
        full = tuple(m if not p else n for p, m, n in zip(periodic, modes, shape))
        v = v[(slice(None),) + np.ix_(*_index(periodic, modes, full))]
    return v


def grid_inverse(c: Array, periodic: tuple[bool, ...], modes: tuple[int, ...], shape: Sequence[int]) -> Array:
    """Truncated coefficients ``(C, *kept_shape)`` -> real values ``(C, *shape)`` on the uniform grid of ``shape``."""
    shape = tuple(int(n) for n in shape)
    fa = tuple(i + 1 for i, p in enumerate(periodic) if p)
    if fa:
        last = _last_periodic(periodic)
        full = [
            m if not p else (n // 2 + 1 if i == last else n) for i, (p, m, n) in enumerate(zip(periodic, modes, shape))
        ]
        z = jnp.zeros((c.shape[0], *full), c.dtype)
        z = z.at[(slice(None),) + np.ix_(*_index(periodic, modes, shape))].set(c)
        c = jnp.fft.irfftn(z, s=[shape[a - 1] for a in fa], axes=fa, norm="forward")
    for i, (p, m) in enumerate(zip(periodic, modes)):
        if not p:
            if m == 1:
                c = jnp.pad(c, [(0, 0)] * (i + 1) + [(0, 1)] + [(0, 0)] * (c.ndim - i - 2))
            c = Chebyshev(max(m, 2)).inverse(c, shape[i], axis=i + 1)
    return c


def grid_coordinates(shape: Sequence[int], periodic: tuple[bool, ...], dtype) -> Array:
    """Coordinate channels ``(d, *shape)`` in ``[0, 1]``: ``j / n`` on periodic axes, ``linspace(0, 1, n)`` else."""
    axes = [np.arange(n) / n if p else np.linspace(0.0, 1.0, n) for n, p in zip(shape, periodic)]
    return jnp.asarray(np.stack(np.meshgrid(*axes, indexing="ij")), dtype)
