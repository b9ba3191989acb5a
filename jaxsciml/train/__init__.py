"""jaxsciml.train: training utilities shared by every pillar.

- [`fit`][jaxsciml.train.fit]: a training loop over `loss_fn(model, batch)` with any optax optimiser, a tqdm bar,
  a metrics history, periodic evaluation, checkpoint/resume, a NaN/inf guard (loss, gradients, new parameters and
  optimiser state) and a time budget; for jittable data it runs many steps per device call (`steps_per_call`,
  bit-identical whatever its value); returns a [`FitResult`][jaxsciml.train.FitResult] (with the median step time
  and the compile time apart).
- [`make_train_step`][jaxsciml.train.make_train_step]: the pure, jit-compiled step `fit` uses.
- [`Checkpointer`][jaxsciml.train.Checkpointer]: orbax `CheckpointManager` checkpoints of
  `(model, opt_state, step, key, history)`; atomic, validated restores.
- Data parallelism: [`data_mesh`][], [`shard_batch`][], [`replicate`][], [`make_sharded_train_step`][] (GSPMD via
  `jax.sharding`) and [`make_pmap_train_step`][], [`pmap_replicate`][], [`pmap_unreplicate`][],
  [`split_for_pmap`][] (`jax.pmap` with `lax.pmean`).
"""

from ._checkpoint import Checkpointer
from ._fit import FitResult, fit
from ._parallel import (
    data_mesh,
    make_pmap_train_step,
    make_sharded_train_step,
    pmap_replicate,
    pmap_unreplicate,
    replicate,
    shard_batch,
    split_for_pmap,
)
from ._step import make_train_step

__all__ = [
    "Checkpointer",
    "FitResult",
    "data_mesh",
    "fit",
    "make_pmap_train_step",
    "make_sharded_train_step",
    "make_train_step",
    "pmap_replicate",
    "pmap_unreplicate",
    "replicate",
    "shard_batch",
    "split_for_pmap",
]
