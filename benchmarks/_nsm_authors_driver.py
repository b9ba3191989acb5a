"""Driver for the authors' Neural Spectral Methods code (github ASK-Berkeley/Neural-Spectral-Methods).

Runs *inside the authors' own environment* (Python 3.11, jax 0.4.13, flax 0.7.0, optax 0.1.5), started as a subprocess
by ``benchmarks/nsm_authors.py``; it imports the authors' package from ``--authors-path`` and never ships any of it.
It uses only the standard library, NumPy and the authors' modules, so it must not import jaxsciml.

Subcommands:

- ``sample``: draw the training pool and the held-out parameters with the authors' own samplers (their Gaussian
  process with the periodic kernel; Poisson sources mean-removed on a 16x16 grid, reaction--diffusion initial conditions
  min--max normalised on 64 points) and save the raw grid values to an ``.npz`` that both sides read.
- ``serve``: build the authors' NSM (``src.model.fno.spectral.FNO``) and ``Trainer`` (Adam with their exponential
  schedule), then answer commands on stdin, one per line: ``train K`` (the next ``K`` steps on the pool's batches,
  per-step wall times), ``native K`` (``K`` steps of their own ``src.train.step``, which samples internally, on a
  throwaway copy: timing only), ``predict PATH`` (held-out predictions on the evaluation grid) and ``quit``. Replies
  are single lines ``@@ {json}`` on stdout (anything else on stdout is the authors' own printing).
"""

from __future__ import annotations

import argparse
import functools
import json
import operator
import os
import sys
import time

import numpy as np

REPLY = "@@ "


def _reply(obj) -> None:
    sys.stdout.write(REPLY + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _import_authors(path: str):
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "src", "pde", "__init__.py")):
        raise SystemExit(f"--authors-path {path!r} does not look like a Neural-Spectral-Methods checkout (no src/pde)")
    sys.path.insert(0, path)
    import src  # noqa: F401  (the authors' package)


def _problem(name: str):
    if name == "poisson":
        from src.pde.poisson import periodic

        return periodic
    if name == "reaction":
        from src.pde.reaction import nu01

        return nu01
    raise SystemExit(f"--problem must be 'poisson' or 'reaction', got {name!r}")


def cmd_sample(args) -> None:
    import jax

    pde = _problem(args.problem)
    dist = pde.params.dist  # the authors' Gaussian-process distribution (values on their sampling grid)
    key = jax.random.PRNGKey(args.seed)
    k_train, k_test = jax.random.split(key)

    def draw(k, shape):
        x = np.asarray(dist.sample(k, shape))
        if args.problem == "reaction":  # (..., 2, 64): the initial condition broadcast over two Chebyshev points
            assert np.array_equal(x[..., 0, :], x[..., 1, :])
            x = x[..., 0, :]
        return x.astype(np.float32)

    keys = jax.random.split(k_train, args.train_batches)
    train = np.stack([draw(k, (args.batch,)) for k in keys])
    test = draw(k_test, (args.test,))
    np.savez(args.out, train=train, test=test, problem=args.problem, seed=args.seed)
    _reply({"train": list(train.shape), "test": list(test.shape)})


def _to_basis(pde, values):
    """Raw grid values (B, *grid) -> the authors' Basis batch, exactly as their ``Interpolate.sample`` does."""
    import jax.numpy as jnp
    from src import utils

    x = jnp.asarray(values)
    if x.ndim == 2:  # reaction: (B, 64) -> (B, 2, 64), constant along the Chebyshev (time) axis
        x = jnp.broadcast_to(x[:, None, :], (x.shape[0], 2, x.shape[1]))
    return utils.nmap(pde.params.basis.transform, 1)(x[..., None])


def cmd_serve(args) -> None:
    import jax
    import jax.numpy as jnp
    import optax
    from src import RNGS
    from src.model import Trainer
    from src.model.fno.spectral import FNO
    from src.train import step as native_step

    pde = _problem(args.problem)
    data = np.load(args.data)
    pool, test = data["train"], data["test"]
    if pool.shape[0] < args.steps or pool.shape[1] != args.batch:
        raise SystemExit(f"pool {pool.shape} too small for {args.steps} steps of batch {args.batch}")
    cfg = dict(
        seed=args.seed, f64=False, hdim=args.width, depth=args.depth, activate=args.activation, mode=args.modes,
        grid=256, fourier=False, cheb=False, bs=args.batch, lr=args.lr, schd="exp", iter=args.steps, clip=None,
        vmap=None,
    )  # fmt: skip
    model = FNO(pde, cfg)
    trainer = Trainer(model, pde, cfg)
    rngs = RNGS(jax.random.PRNGKey(args.seed), ["params", "sample"])
    variable, state = trainer.init_with_output(next(rngs), method="init")
    n_params = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(variable["params"])))

    # One step on a given batch: the authors' `src.train.step` minus its internal sampling (same per-sample gradient,
    # batch mean and Adam update through the Trainer's own optimizer and schedule).
    def fed(self, variable, phi):
        params = variable["params"]

        def loss(p, x):
            terms = self.mod.apply(variable.copy(dict(params=p)), x, method="loss")
            return jax.tree_util.tree_reduce(operator.add, terms), terms

        grads, terms = jax.tree_util.tree_map(
            functools.partial(jnp.mean, axis=0), jax.vmap(jax.grad(loss, has_aux=True), (None, 0))(params, phi)
        )
        updates, opt = self.optimizer.update(grads, self.get_variable("optim", "state"), params)
        self.put_variable("optim", "state", opt)
        return variable.copy(dict(params=optax.apply_updates(params, updates))), terms

    fed_fn = jax.jit(functools.partial(trainer.apply, method=fed, mutable=True))
    phi0 = _to_basis(pde, pool[0])
    t0 = time.perf_counter()
    fed_c = fed_fn.lower(state, variable, phi0).compile()
    compile_s = time.perf_counter() - t0
    try:
        ca = fed_c.cost_analysis()
        flops = float((ca[0] if isinstance(ca, list | tuple) else ca)["flops"])
    except Exception:
        flops = None
    _reply({"ready": True, "compile_s": compile_s, "params": n_params, "flops": flops, "jax": jax.__version__})

    it = 0
    for line in sys.stdin:
        cmd, *rest = line.split()
        if cmd == "train":
            k = int(rest[0])
            times, losses = [], []
            for _ in range(k):
                phi = _to_basis(pde, pool[it])
                jax.block_until_ready(phi)
                t = time.perf_counter()
                (variable, terms), state = fed_c(state, variable, phi)
                jax.block_until_ready((variable, state))
                times.append(time.perf_counter() - t)
                losses.append(float(sum(terms.values())))
                it += 1
            _reply({"step": it, "times": times, "loss": losses})
        elif cmd == "native":
            k = int(rest[0])
            nat = jax.jit(functools.partial(trainer.apply, method=native_step, mutable=True))
            v, s = variable, state
            t = time.perf_counter()
            nat_c = nat.lower(s, v, rngs=next(rngs)).compile()
            c = time.perf_counter() - t
            times = []
            for _ in range(k):
                r = next(rngs)
                t = time.perf_counter()
                (v, _), s = nat_c(s, v, rngs=r)
                jax.block_until_ready((v, s))
                times.append(time.perf_counter() - t)
            _reply({"native_times": times, "native_compile_s": c})
        elif cmd == "predict":
            phi = _to_basis(pde, test)
            grid = (args.eval_t, args.eval_x + 1) if args.problem == "reaction" else (args.eval_x + 1,) * 2
            weights = {"params": variable["params"]}
            apply = jax.jit(jax.vmap(lambda p, w=weights, g=grid: model.apply(w, p, x=g, method="u")))
            u = np.asarray(apply(phi))[..., 0]
            u = u[:, :, :-1] if args.problem == "reaction" else u[:, :-1, :-1]  # drop the periodic end point
            if args.problem == "reaction":
                u = np.swapaxes(u, 1, 2)  # (t, x) -> (x, t), the jaxsciml layout
            np.savez(rest[0], u=u)
            _reply({"predict": rest[0], "shape": list(u.shape)})
        elif cmd == "quit":
            _reply({"bye": True})
            return
        else:
            _reply({"error": f"unknown command {cmd!r}"})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--authors-path", required=True)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--problem", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--train-batches", type=int, required=True)
    s.add_argument("--batch", type=int, default=16)
    s.add_argument("--test", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    v = sub.add_parser("serve")
    v.add_argument("--problem", required=True)
    v.add_argument("--data", required=True)
    v.add_argument("--steps", type=int, required=True)
    v.add_argument("--batch", type=int, default=16)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--width", type=int, default=32)
    v.add_argument("--depth", type=int, default=4)
    v.add_argument("--modes", type=int, nargs="+", required=True)
    v.add_argument("--activation", default="relu")
    v.add_argument("--lr", type=float, default=1e-3)
    v.add_argument("--eval-x", type=int, default=64)
    v.add_argument("--eval-t", type=int, default=65)
    args = p.parse_args(argv)
    _import_authors(args.authors_path)
    {"sample": cmd_sample, "serve": cmd_serve}[args.cmd](args)


if __name__ == "__main__":
    main()
