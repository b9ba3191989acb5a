"""Data-parallel NSM training through jaxsciml.train (GSPMD over 4 fake CPU devices)."""

import equinox as eqx
import jax
import numpy as np
import optax

from jaxsciml import pde, train
from tests.helpers import assert_tree_allclose


def test_nsm_sharded_step_matches_single_device(x64, devices4):
    prob = pde.PoissonPeriodic(n=9, length_scale=0.3)
    model = pde.NSM(prob.basis, 1, 1, width=4, depth=1, activation=jax.nn.gelu, key=jax.random.key(0))
    opt = optax.adam(1e-2)

    def loss_fn(m, batch):
        return pde.nsm_loss(m, prob, batch)

    batch = prob.sample(jax.random.key(1), 8)
    opt_state = opt.init(eqx.filter(model, eqx.is_inexact_array))

    single = train.make_train_step(loss_fn, opt)
    m1, s1, l1, _, ok1 = single(model, opt_state, batch)

    mesh = train.data_mesh(devices4)
    sharded = train.make_sharded_train_step(loss_fn, opt, mesh)
    m4, s4, l4, _, ok4 = sharded(
        train.replicate(model, mesh), train.replicate(opt_state, mesh), train.shard_batch(batch, mesh)
    )
    assert bool(ok1) and bool(ok4)
    np.testing.assert_allclose(l4, l1, rtol=1e-12)
    assert_tree_allclose(eqx.filter(m4, eqx.is_array), eqx.filter(m1, eqx.is_array), rtol=1e-10, atol=1e-12)
    # a few more sharded steps reduce the loss
    ms, ss = m4, s4
    for i in range(5):
        b = train.shard_batch(prob.sample(jax.random.key(10 + i), 8), mesh)
        ms, ss, loss, _, _ = sharded(ms, ss, b)
    assert float(loss_fn(ms, batch)) < float(l1)
