"""benchmarks/nsm_authors.py without the authors' environment: the data hand-over (exact trigonometric resampling of
the authors' grid values onto jaxsciml's grids), the gauge-free error and the argument checks."""

import numpy as np
import pytest

from benchmarks import nsm_authors


def _trig(x, n, rng):
    """A random real trigonometric polynomial band-limited to ``n`` samples (with the cosine Nyquist term if even)."""
    kmax = n // 2
    a = rng.normal(size=kmax + 1)
    b = rng.normal(size=kmax + 1)
    if n % 2 == 0:
        b[kmax] = 0.0  # sin(pi n x) vanishes on the samples: not representable
    k = np.arange(kmax + 1)
    return (a * np.cos(2 * np.pi * np.outer(x, k)) + b * np.sin(2 * np.pi * np.outer(x, k))).sum(-1)


@pytest.mark.parametrize("n,m", [(16, 31), (64, 65), (64, 256), (15, 31), (16, 16)])
def test_periodic_resample_is_the_trigonometric_interpolant(n, m):
    rng = np.random.default_rng(n * 1000 + m)
    coef_rng = np.random.default_rng(0)
    xs, xm = np.arange(n) / n, np.arange(m) / m
    f = _trig(xs, n, coef_rng)
    coef_rng = np.random.default_rng(0)
    want = _trig(xm, n, coef_rng)
    got = nsm_authors.periodic_resample(f, m)
    np.testing.assert_allclose(got, want, atol=1e-11)  # float64 FFT round trip
    # along another axis of a batch
    batch = rng.normal(size=(3, n, 2))
    out = nsm_authors.periodic_resample(batch, m, axis=1)
    assert out.shape == (3, m, 2)
    for i in range(3):
        for j in range(2):
            np.testing.assert_allclose(out[i, :, j], nsm_authors.periodic_resample(batch[i, :, j], m), atol=1e-12)
    np.testing.assert_allclose(out[:, 0, :], batch[:, 0, :], atol=1e-12)  # x = 0 is on both grids
    with pytest.raises(ValueError, match="`m` must be >="):
        nsm_authors.periodic_resample(f, n - 1)


def test_relative_errors_poisson_ignores_the_constant():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(4, 8, 8))
    pred = ref + 0.1 * rng.normal(size=ref.shape)
    e = nsm_authors.relative_errors("poisson", pred, ref)
    np.testing.assert_allclose(nsm_authors.relative_errors("poisson", pred + 3.0, ref - 1.0), e, rtol=1e-12)
    # reaction-diffusion: no gauge, so a constant shift is an error
    assert nsm_authors.relative_errors("reaction", pred + 3.0, ref).min() > 1.0
    np.testing.assert_allclose(nsm_authors.relative_errors("reaction", ref, ref), 0.0)


def test_arguments_are_checked(tmp_path):
    with pytest.raises(SystemExit):
        nsm_authors.main([])  # both paths are required
    with pytest.raises(SystemExit):
        nsm_authors.main(["--authors-path", str(tmp_path / "nope"), "--authors-python", "/bin/sh"])
    with pytest.raises(SystemExit):
        nsm_authors.main(["--authors-path", str(tmp_path), "--authors-python", "/bin/sh", "--problem", "heat"])


def test_runner_keeps_it_off_by_default(tmp_path):
    from benchmarks import run

    assert "nsm_authors" not in run.BENCHMARKS and "nsm_authors" in run.EXTERNAL
    with pytest.raises(SystemExit, match="needs --authors-path and --authors-python"):
        run.main(["--only", "nsm_authors", "--out", str(tmp_path)])


def test_error_verdict_and_untrained_baseline():
    assert nsm_authors.error_verdict(0.1, 0.2, 1.0) == "met"
    assert nsm_authors.error_verdict(0.3, 0.2, 1.0) == "missed"
    assert nsm_authors.error_verdict(0.95, 0.93, 1.0).startswith("inconclusive")
    # reaction-diffusion: u = u0 is exact when nothing happens in time, and the baseline is then 0
    u0 = np.random.default_rng(2).uniform(size=(3, 16))
    ref = np.broadcast_to(nsm_authors.periodic_resample(u0, 32)[..., None], (3, 32, 5))
    assert nsm_authors.trivial_rel_l2("reaction", u0, ref) < 1e-12
    assert nsm_authors.trivial_rel_l2("poisson", u0, ref) == 1.0
