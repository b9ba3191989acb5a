"""Data parallelism on 4 fake CPU devices: sharded (GSPMD) and pmap steps equal single-device training."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from jaxsciml.train import (
    data_mesh,
    fit,
    make_pmap_train_step,
    make_sharded_train_step,
    make_train_step,
    pmap_replicate,
    pmap_unreplicate,
    replicate,
    shard_batch,
    split_for_pmap,
)

from ._util import ADAM, make_batch, make_model, mse, mse_aux

STEPS = 5


def _single_device(steps=STEPS, loss=mse, has_aux=False):
    model = make_model()
    opt_state = ADAM.init(eqx.filter(model, eqx.is_inexact_array))
    step = make_train_step(loss, ADAM, has_aux=has_aux)
    losses = []
    for i in range(steps):
        model, opt_state, value, _, ok = step(model, opt_state, make_batch(i))
        assert bool(ok)
        losses.append(float(value))
    return model, opt_state, losses


def _assert_close(a, b, rtol, atol):
    la = jax.tree_util.tree_leaves(eqx.filter(a, eqx.is_array))
    lb = jax.tree_util.tree_leaves(eqx.filter(b, eqx.is_array))
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# float32: the 4-way split changes only the summation order of the batch mean (and of the all-reduce), i.e.
# differences of a few ulp per step; after 5 Adam steps (lr 1e-2) parameters agree to ~1e-6 absolute.
RTOL, ATOL = 1e-5, 1e-6


def test_mesh_shard_and_replicate(devices4):
    mesh = data_mesh(devices4)
    assert mesh.axis_names == ("data",) and mesh.devices.size == 4
    x, y = shard_batch(make_batch(0), mesh)
    assert x.sharding.spec == PartitionSpec("data")
    assert sorted(s.data.shape for s in x.addressable_shards) == [(8, 3)] * 4
    np.testing.assert_array_equal(np.asarray(x), np.asarray(make_batch(0)[0]))
    model = replicate(make_model(), mesh)
    w = model.layers[0].weight
    assert w.sharding.is_fully_replicated and len(w.sharding.device_set) == 4
    assert model.activation is jax.nn.tanh  # static fields untouched


def test_bad_batch_for_sharding(devices4):
    mesh = data_mesh(devices4)
    with pytest.raises(ValueError, match=r"`batch` leaf `\[0\]` has shape \(30, 3\).*divisible by the 4 devices"):
        shard_batch(make_batch(0, 30), mesh)
    with pytest.raises(ValueError, match="`batch`"):
        shard_batch(jnp.ones(()), mesh)
    with pytest.raises(ValueError, match="`axis` 'batch' is not an axis"):
        shard_batch(make_batch(0), mesh, axis="batch")
    with pytest.raises(ValueError, match=r"`batch` leaf .* divisible by the 3 devices"):
        split_for_pmap(make_batch(0), 3)
    with pytest.raises(ValueError, match="`n`"):
        split_for_pmap(make_batch(0), 0)


def test_sharded_step_matches_single_device(devices4):
    ref_model, ref_opt, ref_losses = _single_device()
    mesh = data_mesh(devices4)
    step = make_sharded_train_step(mse, ADAM, mesh)
    model = replicate(make_model(), mesh)
    opt_state = replicate(ADAM.init(eqx.filter(make_model(), eqx.is_inexact_array)), mesh)
    losses = []
    for i in range(STEPS):
        model, opt_state, loss, _, ok = step(model, opt_state, shard_batch(make_batch(i), mesh))
        assert bool(ok)
        losses.append(float(loss))
    assert model.layers[0].weight.sharding.is_fully_replicated
    np.testing.assert_allclose(losses, ref_losses, rtol=RTOL)
    _assert_close(model, ref_model, RTOL, ATOL)
    _assert_close(opt_state, ref_opt, RTOL, ATOL)
    # the trained model moved away from the initialisation by much more than the tolerance
    assert float(jnp.max(jnp.abs(model.layers[0].weight - make_model().layers[0].weight))) > 1e-2


def test_fit_with_sharded_step(devices4):
    ref_model, _, ref_losses = _single_device()
    mesh = data_mesh(devices4)
    res = fit(
        replicate(make_model(), mesh),
        mse,
        ADAM,
        lambda s: shard_batch(make_batch(s), mesh),
        STEPS,
        train_step=make_sharded_train_step(mse, ADAM, mesh),
        progress=False,
    )
    np.testing.assert_allclose(res.history["loss"], ref_losses, rtol=RTOL)
    _assert_close(res.model, ref_model, RTOL, ATOL)


def test_pmap_step_matches_single_device(devices4):
    ref_model, ref_opt, ref_losses = _single_device(loss=mse_aux, has_aux=True)
    step = make_pmap_train_step(mse_aux, ADAM, has_aux=True, devices=devices4)
    model = pmap_replicate(make_model(), devices4)
    opt_state = pmap_replicate(ADAM.init(eqx.filter(make_model(), eqx.is_inexact_array)), devices4)
    assert model.layers[0].weight.shape == (4, 16, 3)
    for i in range(STEPS):
        model, opt_state, loss, aux, ok = step(model, opt_state, split_for_pmap(make_batch(i), 4))
        assert loss.shape == (4,) and bool(jnp.all(ok))
        np.testing.assert_allclose(np.asarray(loss), ref_losses[i], rtol=RTOL)  # pmean'd: global mean loss
        assert aux["pred"].shape == (4, 8, 2)  # per-shard predictions, not averaged away
    # all replicas hold the same parameters
    for leaf in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array)):
        for r in range(1, 4):
            np.testing.assert_array_equal(np.asarray(leaf[r]), np.asarray(leaf[0]))
    _assert_close(pmap_unreplicate(model), ref_model, RTOL, ATOL)
    _assert_close(pmap_unreplicate(opt_state), ref_opt, RTOL, ATOL)


def test_parallel_paths_match_in_float64(x64, devices4):
    """In float64 the only difference is summation order: agreement to ~1e-13 (tolerance 1e-10)."""
    ref_model, _, _ = _single_device(steps=3)
    mesh = data_mesh(devices4)
    step = make_sharded_train_step(mse, ADAM, mesh)
    model = replicate(make_model(), mesh)
    assert model.layers[0].weight.dtype == jnp.float64
    opt_state = replicate(ADAM.init(eqx.filter(make_model(), eqx.is_inexact_array)), mesh)
    pstep = make_pmap_train_step(mse, ADAM, devices=devices4)
    pmodel = pmap_replicate(make_model(), devices4)
    popt = pmap_replicate(ADAM.init(eqx.filter(make_model(), eqx.is_inexact_array)), devices4)
    for i in range(3):
        model, opt_state, *_ = step(model, opt_state, shard_batch(make_batch(i), mesh))
        pmodel, popt, *_ = pstep(pmodel, popt, split_for_pmap(make_batch(i), 4))
    _assert_close(model, ref_model, 1e-10, 1e-12)
    _assert_close(pmap_unreplicate(pmodel), ref_model, 1e-10, 1e-12)


def test_sharded_fit_checkpoint_resume(devices4, tmp_path):
    """Checkpoints of a replicated model restore with the template's sharding; resume is bit-identical."""
    from jaxsciml.train import Checkpointer

    mesh = data_mesh(devices4)
    step = make_sharded_train_step(mse, ADAM, mesh)

    def run(n, ck=None, seed=0):
        return fit(
            replicate(make_model(seed), mesh),
            mse,
            ADAM,
            lambda s: shard_batch(make_batch(s), mesh),
            n,
            train_step=step,
            checkpointer=ck,
            progress=False,
        )

    full = run(STEPS)
    with Checkpointer(tmp_path) as ck:
        run(2, ck)
    with Checkpointer(tmp_path) as ck:
        resumed = run(STEPS, ck, seed=3)
    w = resumed.model.layers[0].weight
    assert w.sharding.is_fully_replicated and len(w.sharding.device_set) == 4
    for a, b in zip(jax.tree_util.tree_leaves(resumed.opt_state), jax.tree_util.tree_leaves(full.opt_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(
        jax.tree_util.tree_leaves(eqx.filter(resumed.model, eqx.is_array)),
        jax.tree_util.tree_leaves(eqx.filter(full.model, eqx.is_array)),
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
