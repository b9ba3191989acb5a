"""One process of the 2-process data-parallel run launched by tests/train/test_multiprocess.py (not a test module).

Usage: ``python -m tests.train._multiprocess_worker PORT NUM_PROCESSES PROCESS_ID WORKDIR``

Each process owns 2 fake CPU devices; `jax.distributed.initialize` joins them into one 4-device mesh (CPU collectives
over gloo). Every process feeds its own half of the same global batch (`make_batch(step)`, 32 rows) and runs

- run A: `fit` for `STEPS` steps from scratch with a checkpoint every `EVERY` steps into WORKDIR/ckpt_a;
- run B: `fit` for `EVERY` steps into WORKDIR/ckpt_b, then a new `Checkpointer` on that directory and a differently
  initialised template: `fit` resumes to `STEPS`.

then tries to save a checkpoint whose key differs between the processes (refused). It writes the final parameters,
losses and keys of both runs and the outcome of that check to WORKDIR/process_<id>.npz.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

LOCAL_DEVICES = 2
STEPS, EVERY = 6, 3


def main(port: str, num_processes: int, process_id: int, workdir: str) -> None:
    jax.config.update("jax_num_cpu_devices", LOCAL_DEVICES)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        f"localhost:{port}", num_processes=num_processes, process_id=process_id, initialization_timeout=120
    )
    import equinox as eqx
    import numpy as np

    from jaxsciml import train
    from tests.train._util import ADAM, make_batch, make_model, mse

    assert jax.process_count() == num_processes and len(jax.local_devices()) == LOCAL_DEVICES
    mesh = train.data_mesh()  # every process's devices, in process order
    rows = 32 // num_processes

    def data(step):
        x, y = make_batch(step)  # the global batch; this process feeds its own rows
        mine = slice(process_id * rows, (process_id + 1) * rows)
        return train.shard_batch((np.asarray(x)[mine], np.asarray(y)[mine]), mesh)

    step_fn = train.make_sharded_train_step(mse, ADAM, mesh)

    def run(num_steps, directory, seed=0):
        with train.Checkpointer(directory, max_to_keep=None) as ckpt:
            return train.fit(
                train.replicate(make_model(seed), mesh),
                mse,
                ADAM,
                data,
                num_steps,
                key=jax.random.key(7),
                data_arg="step",
                train_step=step_fn,
                checkpointer=ckpt,
                checkpoint_every=EVERY,
                progress=False,
            )

    a = run(STEPS, os.path.join(workdir, "ckpt_a"))
    run(EVERY, os.path.join(workdir, "ckpt_b"))
    b = run(STEPS, os.path.join(workdir, "ckpt_b"), seed=99)  # resumes from step EVERY
    assert a.step == b.step == STEPS

    # A host-local leaf that differs between processes (here a per-process key) is refused on every process.
    with train.Checkpointer(os.path.join(workdir, "ckpt_b")) as ckpt:
        try:
            ckpt.save(100, a.model, a.opt_state, jax.random.key(process_id))
            differing_key_refused = False
        except ValueError as e:
            differing_key_refused = "leaf `key`" in str(e) and "different values on different processes" in str(e)
        assert ckpt.latest_step() == STEPS

    def params(model):
        return {f"{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array)))}

    np.savez(
        os.path.join(workdir, f"process_{process_id}.npz"),
        **{f"a_{k}": v for k, v in params(a.model).items()},
        **{f"b_{k}": v for k, v in params(b.model).items()},
        loss_a=np.asarray(a.history["loss"]),
        loss_b=np.asarray(b.history["loss"]),
        key_a=np.asarray(jax.random.key_data(a.key)),
        key_b=np.asarray(jax.random.key_data(b.key)),
        differing_key_refused=np.asarray(differing_key_refused),
    )
    print(f"process {process_id}: done, final loss {a.history['loss'][-1]:.6g}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
