"""Property-based tests (hypothesis) of what every Shampoo variant is built on: blocking and 4-bit quantization."""

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from jaxsciml.optim import dequantize, linear_square_codebook, make_plan, quantize  # noqa: E402
from jaxsciml.optim._blocking import from_blocks, to_blocks  # noqa: E402

SETTINGS = settings(max_examples=20, deadline=None)


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple),
    block=st.one_of(st.none(), st.integers(1, 8)),
    merge=st.booleans(),
)
def test_blocks_round_trip_and_cover_every_entry(shape, block, merge):
    plan = make_plan(shape, block, merge_small_dims=merge)
    x = np.arange(1, np.prod(shape) + 1, dtype=np.float32).reshape(shape)
    if plan.kind != "block":
        assert len(shape) <= 1 or plan.kind == "diag"
        return
    xb = np.asarray(to_blocks(x, plan))
    assert xb.shape == (plan.num_blocks, *plan.block)
    if block is not None:
        assert max(plan.block) <= block
    # every entry appears exactly once among the blocks; the rest is zero padding
    vals = np.sort(xb[xb != 0])
    np.testing.assert_array_equal(vals, np.sort(x.ravel()))
    np.testing.assert_array_equal(np.asarray(from_blocks(xb, plan)), x)


@settings(max_examples=10, deadline=None)  # each (d, block) pair compiles anew: few sizes, many seeds
@given(d=st.sampled_from([3, 8, 17, 40]), block=st.sampled_from([4, 16, 64]), seed=st.integers(0, 2**16))
def test_quantization_error_is_within_half_a_code_gap(d, block, seed):
    u = np.random.default_rng(seed).normal(size=(2, d, d)).astype(np.float32)
    back = np.asarray(dequantize(quantize(u, block), d))
    assert back.shape == u.shape
    # each entry is rounded to the nearest code value times its chunk's absmax scale, so the error is at most half
    # the largest gap of the codebook times the column's largest magnitude (a bound over all chunks of the column)
    gap = np.max(np.diff(linear_square_codebook(4)))
    colmax = np.max(np.abs(u), axis=1, keepdims=True)
    assert np.all(np.abs(back - u) <= 0.5 * gap * colmax + 1e-6)
    # the absmax entry of each column is represented exactly (code value +-1)
    idx = np.argmax(np.abs(u), axis=1)
    picked = np.take_along_axis(back, idx[:, None, :], axis=1)
    np.testing.assert_allclose(picked, np.take_along_axis(u, idx[:, None, :], axis=1), rtol=1e-6)
