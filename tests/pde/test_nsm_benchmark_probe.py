"""The equal-time probe of benchmarks/nsm.py: step times measured side by side rank a cheap and a costly step."""

import jax
import jax.numpy as jnp

from benchmarks.nsm import _interleaved_step_times


def test_interleaved_step_times_ranks_costs():
    # two "models" (plain arrays) with the same optimizer: a 4x4 least-squares step and one with 12 products of
    # 256x256 matrices (~400 MFLOP, >= 100x the cheap step's work)
    cheap = jnp.eye(4)
    costly = jnp.eye(256) * 0.5

    def cheap_loss(w, x):
        return jnp.mean((w @ x) ** 2)

    def costly_loss(w, x):
        y = x
        for _ in range(12):
            y = jnp.tanh(w @ y)
        return jnp.mean(y**2)

    specs = [
        (cheap, cheap_loss, lambda k: jax.random.normal(k, (4, 4)), "adam"),
        (costly, costly_loss, lambda k: jax.random.normal(k, (256, 256)), "adam"),
    ]
    wall, cpu = _interleaved_step_times(specs, steps=100, rounds=3, chunk=4)
    assert len(wall) == len(cpu) == 2
    assert all(t > 0 for t in wall + cpu)
    assert wall[1] > 3 * wall[0], wall  # the costly step is measured as costlier (compile excluded)
