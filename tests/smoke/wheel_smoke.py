"""A jitted training step of each pillar, run by tests/test_wheel.py against the installed wheel (outside the source
tree). Every step goes through `jaxsciml.train.make_train_step`; each asserts the loss is finite and that the step
changed the parameters (so the gradient really flowed)."""


def _changed(a, b):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    la = jax.tree_util.tree_leaves(eqx.filter(a, eqx.is_inexact_array))
    lb = jax.tree_util.tree_leaves(eqx.filter(b, eqx.is_inexact_array))
    return any(bool(jnp.any(x != y)) for x, y in zip(la, lb))


def _one_step(model, loss_fn, batch, optimizer):
    import equinox as eqx
    import jax.numpy as jnp

    from jaxsciml.train import make_train_step

    step = make_train_step(loss_fn, optimizer)
    state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    new, state, loss, _, ok = step(model, state, batch)
    assert bool(ok) and bool(jnp.isfinite(loss)), loss
    assert _changed(model, new)
    return float(loss)


def run_ode():
    import jax
    import jax.numpy as jnp
    import optax

    from jaxsciml.ode import HeuristicRegularization, MLPVectorField, NeuralODE, SolverConfig

    model = NeuralODE(MLPVectorField(2, 8, 2, key=jax.random.key(0)), 0.0, 1.0, SolverConfig(rtol=1e-3, atol=1e-5))
    ts = jnp.linspace(0.0, 1.0, 5)
    y0 = jnp.array([1.0, 0.0])
    target = jnp.stack([jnp.cos(ts), -jnp.sin(ts)], -1)

    def loss_fn(m, batch):
        out = m(batch, ts, regularizer=HeuristicRegularization(0.1, 0.01))
        assert out.stats.num_accepted is not None
        return jnp.mean((out.ys - target) ** 2) + out.penalty

    return _one_step(model, loss_fn, y0, optax.adam(1e-2))


def run_pde():
    import jax
    import optax

    from jaxsciml.pde import NSM, PoissonPeriodic, nsm_loss

    prob = PoissonPeriodic(n=9)
    model = NSM(prob.basis, 1, 1, width=8, depth=1, key=jax.random.key(0))
    params = prob.sample(jax.random.key(1), 2)
    return _one_step(model, lambda m, p: nsm_loss(m, prob, p), params, optax.adam(1e-3))


def run_optim():
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from jaxsciml.optim import shampoo

    model = eqx.nn.MLP(4, 1, 8, 1, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (16, 4))
    y = x @ jnp.arange(1.0, 5.0)[:, None]

    def loss_fn(m, batch):
        xb, yb = batch
        return jnp.mean((jax.vmap(m)(xb) - yb) ** 2)

    return _one_step(model, loss_fn, (x, y), shampoo(1e-2, block_size=8, precondition_every=1))


def run():
    losses = {"ode": run_ode(), "pde": run_pde(), "optim": run_optim()}
    print("smoke losses", losses)
