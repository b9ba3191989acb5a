"""Staggered root refresh (``stagger_refresh=True``) vs a float64 reference that refreshes every root on its own
schedule (issue 19, "No refresh spike").

Reference: dense NumPy, ragged blocks (zero padding is exact, see ``_blocking``), root ``(S + eps lambda_max I)^(-1/4)``
by numpy ``eigh``; root ``(leaf, mode, block)`` in slot ``k`` of :func:`refresh_slots` is recomputed at step
``start`` and at the steps ``t > start`` with ``(t - start) % every == k``, else kept (identity before its first
refresh). Tolerance 1e-8 (both sides float64 eigendecompositions of the same matrices).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsciml.optim import make_plan, scale_by_shampoo
from jaxsciml.optim._shampoo import refresh_slots


def np_root(s, p, eps):
    w, q = np.linalg.eigh(0.5 * (s + s.T))
    w = np.maximum(w, 0.0)
    if w.max() <= 0:
        return None
    return (q * (w + eps * w.max()) ** (-p)) @ q.T


def split(d, bs):
    return [slice(0, d)] if d <= bs else [slice(i, min(i + bs, d)) for i in range(0, d, bs)]


def reference(grads, bs, eps, beta2, every, start, slot_of):
    """grads: list over steps of lists over leaves (2-D). slot_of[(li, m, j)] -> slot."""
    out = []
    state = {}
    for t, gl in enumerate(grads, start=1):
        ups = []
        for li, g in enumerate(gl):
            rows, cols = split(g.shape[0], bs), split(g.shape[1], bs)
            u = np.zeros_like(g)
            for j, (r, c) in enumerate(itertools.product(rows, cols)):
                gb = g[r, c]
                for m, gram in enumerate((gb @ gb.T, gb.T @ gb)):
                    key = (li, m, j)
                    s, root = state.get(key, (np.zeros_like(gram), np.eye(gram.shape[0])))
                    s = beta2 * s + (1 - beta2) * gram
                    due = t == start or (t > start and (t - start) % every == slot_of[key])
                    if due:
                        new = np_root(s, 0.25, eps)
                        root = root if new is None else new
                    state[key] = (s, root)
                u[r, c] = state[(li, 0, j)][1] @ gb @ state[(li, 1, j)][1]
            ups.append(u)
        out.append(ups)
    return out


@pytest.mark.parametrize("start", [1, 3])
def test_staggered_matches_per_root_schedule(x64, start):
    rng = np.random.default_rng(0)
    shapes, bs, every, eps, beta2, steps = [(7, 9), (5, 3)], 4, 3, 1e-4, 0.9, 9
    grads = [[rng.normal(size=s) * np.linspace(0.3, 2.0, s[0])[:, None] for s in shapes] for _ in range(steps)]
    plans = [make_plan(s, bs) for s in shapes]
    slots = refresh_slots(plans, every)
    slot_of = {(li, m, int(j)): k for k, sl in enumerate(slots) for (li, m), idx in sl.items() for j in idx}
    # every root is in exactly one slot, and the slots' work differs by at most one largest root
    assert len(slot_of) == sum(sum(1 for _ in range(p.num_blocks)) * p.order for p in plans)
    work = [sum(plans[li].block[m] ** 3 * len(idx) for (li, m), idx in sl.items()) for sl in slots]
    assert max(work) - min(work) <= bs**3
    opt = scale_by_shampoo(
        block_size=bs,
        beta1=0.0,
        beta2=beta2,
        epsilon=eps,
        precondition_every=every,
        start_preconditioning_step=start,
        graft="none",
        stagger_refresh=True,
    )
    params = [jnp.zeros(s) for s in shapes]
    state = opt.init(params)
    upd = jax.jit(opt.update)
    want = reference(grads, bs, eps, beta2, every, start, slot_of)
    for t, (g, w) in enumerate(zip(grads, want), start=1):
        u, state = upd([jnp.asarray(x) for x in g], state)
        if t < start:
            continue  # before start the graft ("none": the gradient) is returned, as without staggering
        for a, b in zip(u, w):
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-8, atol=1e-10)


def test_staggered_4bit_roots_refresh_only_their_slot():
    """4-bit roots mode: at a step t > start only the eigen-pairs of slot (t - start) % every change."""
    params = {"w": jnp.zeros((12, 8))}
    opt = scale_by_shampoo(block_size=4, precondition_every=4, quantize_eigenvectors=True, stagger_refresh=True)
    slots = refresh_slots([make_plan((12, 8), 4)], 4)
    state = opt.init(params)
    upd = jax.jit(opt.update)
    rng = np.random.default_rng(1)
    for t in range(1, 7):
        before = state.eigvals
        _, state = upd({"w": jnp.asarray(rng.normal(size=(12, 8)), jnp.float32)}, state)
        if t == 1:
            continue
        sel = slots[(t - 1) % 4]
        for m in range(2):
            changed = np.any(np.asarray(state.eigvals[0][m]) != np.asarray(before[0][m]), axis=-1)
            np.testing.assert_array_equal(np.flatnonzero(changed), sel.get((0, m), np.zeros(0, int)))
