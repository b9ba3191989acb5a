"""The public API is a contract with downstream projects: every name listed here must stay importable from its
subpackage and be listed in its ``__all__``. Adding names is fine (this test does not forbid it); removing or renaming
one fails here first, so it has to be a deliberate, visible change."""

import importlib
import inspect

import pytest

import jaxsciml

PUBLIC = {
    "ode": [
        "AbstractRegularizer", "HeuristicRegularization", "HeuristicSolver", "HeuristicState", "Heuristics",
        "LatentODE", "MLPVectorField", "NeuralODE", "NeuralSDE", "NoRegularization", "ODEClassifier", "ODEOutput",
        "RNODE", "STEER", "SolveStats", "SolverConfig", "TayNODE", "local_step_heuristics", "regularized_solve",
        "solve_with_heuristics", "solve_with_local_heuristics", "stiffness_stage_pair", "taylor_derivative",
        "TargetCost",
        "TargetCostState",
    ],
    "pde": [
        "AbstractBasis", "AbstractProblem", "Chebyshev", "FNO", "Fourier", "FourierLayer", "NSM", "NavierStokes2D",
        "PoissonDirichlet", "PoissonPeriodic", "ReactionDiffusion", "SpectralLayer", "TensorBasis", "as_tensor_basis",
        "chebyshev_diff_matrix", "dealias_size", "default_optimizer", "derivative", "etdrk4_coefficients",
        "fno_forcing", "fno_loss", "fno_predict", "gaussian_random_field", "grf_spectrum", "laplacian", "nsm_loss",
        "nsm_predict", "pointwise", "product", "relative_error", "relative_l2", "solve_navier_stokes",
        "solve_poisson_dirichlet", "solve_reaction_diffusion", "spectral_loss", "squared_norm", "train_operator",
    ],
    "optim": [
        "BlockPlan", "QuantizedMatrix", "STATIC_ARGS", "ShampooState", "SoapState", "bjorck", "dequantize", "health",
        "linear_square_codebook", "make_plan", "memory_breakdown", "preconditioner_memory_bytes", "quantize",
        "scale_by_shampoo", "scale_by_soap", "shampoo", "soap", "state_memory_bytes",
    ],
    "train": [
        "Checkpointer", "FitResult", "data_mesh", "fit", "make_pmap_train_step", "make_sharded_train_step",
        "make_train_step", "pmap_replicate", "pmap_unreplicate", "replicate", "shard_batch", "split_for_pmap",
    ],
}  # fmt: skip


def test_top_level():
    assert set(jaxsciml.__all__) >= {"__version__", "ode", "pde", "optim", "train"}
    for sub in PUBLIC:
        assert getattr(jaxsciml, sub) is importlib.import_module(f"jaxsciml.{sub}")


@pytest.mark.parametrize("sub", sorted(PUBLIC))
def test_names_present(sub):
    mod = importlib.import_module(f"jaxsciml.{sub}")
    missing_all = sorted(set(PUBLIC[sub]) - set(mod.__all__))
    assert not missing_all, f"jaxsciml.{sub}.__all__ lost {missing_all}"
    missing_attr = [n for n in PUBLIC[sub] if not hasattr(mod, n)]
    assert not missing_attr, f"jaxsciml.{sub} lost {missing_attr}"
    assert len(set(mod.__all__)) == len(mod.__all__), "duplicate names in __all__"
    for name in mod.__all__:
        assert hasattr(mod, name), f"jaxsciml.{sub}.__all__ lists {name!r}, which does not exist"


@pytest.mark.parametrize("sub", sorted(PUBLIC))
def test_public_objects_documented_and_from_private_modules(sub):
    mod = importlib.import_module(f"jaxsciml.{sub}")
    for name in mod.__all__:
        obj = getattr(mod, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        assert inspect.getdoc(obj), f"jaxsciml.{sub}.{name} has no docstring"
        where = getattr(obj, "__module__", "")
        assert where.startswith(f"jaxsciml.{sub}."), (name, where)
        assert where.rsplit(".", 1)[-1].startswith("_"), f"{name} is defined in public module {where}"
