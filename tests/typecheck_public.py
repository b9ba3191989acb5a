"""Type-checked, never run: tests/test_types.py runs mypy and pyright on this file, and each ``assert_type`` fails the
check when a public result's static type is not the one stated (e.g. when it degrades to ``Any``, which matches only
``Any``)."""

import equinox as eqx
import jax
import optax
from jax.sharding import Mesh
from jaxtyping import Array
from typing_extensions import assert_type

from jaxsciml import ode, pde, train


def fit_keeps_the_model_type(model: eqx.nn.MLP, batches: list[Array]) -> None:
    res = train.fit(model, lambda m, b: (m(b) ** 2).mean(), optax.adam(1e-3), batches, 2, progress=False)
    assert_type(res, train.FitResult[eqx.nn.MLP])
    assert_type(res.model, eqx.nn.MLP)
    assert_type(res.key, Array | None)
    assert_type(res.step, int)
    again = train.fit(res.model, lambda m, b: (m(b) ** 2).mean(), optax.adam(1e-3), batches, 4, start=res)
    assert_type(again.model, eqx.nn.MLP)


def checkpoints_restore_the_templates_types(ckpt: train.Checkpointer, model: eqx.nn.MLP, opt: tuple[Array]) -> None:
    m, o, step, key, history = ckpt.restore(model, opt)
    assert_type(m, eqx.nn.MLP)
    assert_type(o, tuple[Array])
    assert_type(step, int)
    assert_type(key, Array | None)


def parallel_helpers_keep_the_tree_type(batch: Array, model: eqx.nn.MLP, mesh: Mesh) -> None:
    assert_type(train.shard_batch(batch, mesh), Array)
    assert_type(train.replicate(model, mesh), eqx.nn.MLP)
    assert_type(train.split_for_pmap(batch, 2), Array)
    assert_type(train.pmap_replicate(model), eqx.nn.MLP)
    assert_type(train.pmap_unreplicate(train.pmap_replicate(model)), eqx.nn.MLP)


def ode_outputs_have_the_state_type(y0: Array, xs: Array, ts: Array, key: Array) -> None:
    field = ode.MLPVectorField(2, 16, 2, key=key)
    node = ode.NeuralODE(field)
    out = node(y0, ts)
    assert_type(out, ode.ODEOutput[Array])
    assert_type(out.ys, Array)
    assert_type(node.batched(xs).ys, Array)
    pair = node((y0, y0))
    assert_type(pair.ys, tuple[Array, Array])
    assert_type(ode.regularized_solve(field, y0, 0.0, 1.0).ys, Array)
    clf = ode.ODEClassifier(eqx.nn.Linear(4, 2, key=key), node, eqx.nn.Linear(2, 3, key=key))
    assert_type(clf(xs).ys, Array)
    latent = ode.LatentODE(3, 2, 8, 8, key=key)
    assert_type(latent(ts, xs, ts).ys, Array)


def pde_training_keeps_the_model_type(model: pde.FNO, key: Array) -> None:
    trained, record = pde.train_operator(model, lambda m, p: (m(p) ** 2).mean(), lambda k: jax.random.normal(k), 2, key)
    assert_type(trained, pde.FNO)
