"""Bad input to fit / make_train_step / Checkpointer: clear errors naming the argument."""

import jax.numpy as jnp
import optax
import pytest

from jaxsciml.train import Checkpointer, fit, make_train_step

from ._util import ADAM, make_batch, make_model, mse, mse_aux


def test_non_callable_loss_fn():
    with pytest.raises(TypeError, match="`loss_fn` must be callable"):
        fit(make_model(), "mse", ADAM, make_batch, 3, progress=False)
    with pytest.raises(TypeError, match="`loss_fn`"):
        make_train_step(None, ADAM)


@pytest.mark.parametrize("data", [[], (), iter([]), (b for b in [])])
def test_empty_data(data):
    with pytest.raises(ValueError, match="`data` is empty"):
        fit(make_model(), mse, ADAM, data, 3, progress=False)


def test_data_not_iterable():
    with pytest.raises(TypeError, match="`data` must be an iterable"):
        fit(make_model(), mse, ADAM, 3.0, 3, progress=False)


@pytest.mark.parametrize("n", [0, -1])
def test_nonpositive_num_steps(n):
    with pytest.raises(ValueError, match="`num_steps` must be >= 1"):
        fit(make_model(), mse, ADAM, make_batch, n, progress=False)


@pytest.mark.parametrize("n", [2.5, "3", True])
def test_non_integer_num_steps(n):
    with pytest.raises(TypeError, match="`num_steps` must be an integer"):
        fit(make_model(), mse, ADAM, make_batch, n, progress=False)


@pytest.mark.parametrize("opt", [None, "adam", optax.adam, lambda g: g, (1, 2)])
def test_not_an_optax_transformation(opt):
    with pytest.raises(TypeError, match="`optimizer` must be an optax GradientTransformation"):
        fit(make_model(), mse, opt, make_batch, 3, progress=False)
    with pytest.raises(TypeError, match="`optimizer`"):
        make_train_step(mse, opt)


def test_unknown_nonfinite():
    with pytest.raises(ValueError, match="`nonfinite` must be one of"):
        fit(make_model(), mse, ADAM, make_batch, 3, nonfinite="warn", progress=False)
    with pytest.raises(ValueError, match="`nonfinite`"):
        fit(make_model(), mse, ADAM, make_batch, 3, nonfinite="ignore", progress=False)  # step-only option
    with pytest.raises(ValueError, match="`nonfinite`"):
        make_train_step(mse, ADAM, nonfinite=None)


@pytest.mark.parametrize("k", [0, -3])
def test_steps_per_call_below_one(k):
    with pytest.raises(ValueError, match="`steps_per_call` must be >= 1"):
        fit(make_model(), mse, ADAM, make_batch, 3, steps_per_call=k, progress=False)


@pytest.mark.parametrize("k", [2.0, "4", True])
def test_steps_per_call_not_an_integer(k):
    with pytest.raises(TypeError, match="`steps_per_call` must be an integer"):
        fit(make_model(), mse, ADAM, make_batch, 3, steps_per_call=k, progress=False)


def test_chunking_asked_for_data_that_cannot_be_chunked():
    """steps_per_call > 1 with a data callable that does not trace, a generator or a custom train_step: a clear
    error naming `steps_per_call`, `data` and the fallback (steps_per_call=None)."""
    batches = [make_batch(i) for i in range(3)]
    cases = [
        (lambda s: batches[s % 3], "`data` could not be traced"),  # list indexed by a traced step
        ((b for b in batches), "`data` is a generator"),
        (lambda s: batches[0], r"does not depend on its argument"),
    ]
    for data, why in cases:
        with pytest.raises(ValueError, match=rf"`steps_per_call=4` needs `data` .*{why}.*`steps_per_call=None`"):
            fit(make_model(), mse, ADAM, data, 3, steps_per_call=4, progress=False)
    with pytest.raises(ValueError, match="custom `train_step`"):
        fit(make_model(), mse, ADAM, make_batch, 3, steps_per_call=4, train_step=make_train_step(mse, ADAM),
            progress=False)  # fmt: skip


@pytest.mark.parametrize("t", [0, -1.0, float("nan")])
def test_max_time_s_not_positive(t):
    with pytest.raises(ValueError, match="`max_time_s` must be > 0"):
        fit(make_model(), mse, ADAM, make_batch, 3, max_time_s=t, progress=False)


@pytest.mark.parametrize("t", ["1", True, [1.0]])
def test_max_time_s_not_a_number(t):
    with pytest.raises(TypeError, match="`max_time_s` must be a positive number"):
        fit(make_model(), mse, ADAM, make_batch, 3, max_time_s=t, progress=False)


def test_checkpoint_directory_is_a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("not a directory")
    with pytest.raises(ValueError, match="`directory`"):
        fit(make_model(), mse, ADAM, make_batch, 3, checkpointer=Checkpointer(f), progress=False)
    with pytest.raises(TypeError, match="`checkpointer` must be"):
        fit(make_model(), mse, ADAM, make_batch, 3, checkpointer=str(tmp_path), progress=False)


def test_other_options():
    with pytest.raises(ValueError, match="`eval_every`"):
        fit(make_model(), mse, ADAM, make_batch, 3, eval_every=-1, progress=False)
    with pytest.raises(ValueError, match="`checkpoint_every`"):
        fit(make_model(), mse, ADAM, make_batch, 3, checkpoint_every=-2, progress=False)
    with pytest.raises(TypeError, match="`eval_fn`"):
        fit(make_model(), mse, ADAM, make_batch, 3, eval_fn=1, progress=False)
    with pytest.raises(ValueError, match="`data_arg`"):
        fit(make_model(), mse, ADAM, make_batch, 3, data_arg="batch", progress=False)
    with pytest.raises(ValueError, match="needs a PRNG `key`"):
        fit(make_model(), mse, ADAM, make_batch, 3, data_arg="key", progress=False)


def test_loss_fn_output_checked_at_trace_time():
    with pytest.raises(ValueError, match="scalar loss"):
        fit(make_model(), lambda m, b: (b[0] ** 2).sum(0), ADAM, make_batch, 2, progress=False)
    with pytest.raises(TypeError, match="has_aux=True"):
        fit(make_model(), mse_aux, ADAM, make_batch, 2, progress=False)
    with pytest.raises(TypeError, match=r"pair `\(loss, aux\)`"):
        fit(make_model(), mse, ADAM, make_batch, 2, has_aux=True, progress=False)
    with pytest.raises(ValueError, match="scalar loss"):
        fit(make_model(), lambda m, b: jnp.ones(3), ADAM, make_batch, 2, progress=False)
