"""The `jaxsciml` console script: argument handling and the results table (the pillars' demo hooks themselves are
run in tests/<pillar>/test_demo.py)."""

import importlib.metadata
import subprocess
import sys

import pytest

from jaxsciml import _cli


def test_format_table_marks_unreached_targets():
    rows = [
        dict(pillar="optim", task="t", method="a", metric="m", value=0.5, steps_or_nfe=200, reached_target=False),
        dict(pillar="optim", task="t", method="b", metric="m", value=1e-4, steps_or_nfe=80, reached_target=True),
    ]
    lines = _cli.format_table(rows).splitlines()
    assert lines[0].split()[:5] == ["pillar", "task", "method", "metric", "value"]
    assert set(lines[1]) <= {"-", " "}
    assert ">200" in lines[2].split() and "0.5" in lines[2].split()
    assert "80" in lines[3].split() and "0.0001" in lines[3].split()


def test_demo_main_with_stub_pillar(monkeypatch, capsys):
    calls = []

    def fake_run_demo(pillars, size, progress, out_dir):
        calls.append((tuple(pillars), size, progress, out_dir))
        return [dict(pillar="ode", task="spiral", method="x", metric="mse", value=0.1, steps_or_nfe=99, wall_s=1.0,
                     compile_s=2.0)]  # fmt: skip

    monkeypatch.setattr(_cli, "run_demo", fake_run_demo)
    assert _cli.main(["demo", "--pillar", "ode", "--size", "medium", "--no-progress"]) == 0
    assert calls == [(("ode",), "medium", False, None)]
    out = capsys.readouterr().out
    assert "spiral" in out and "vector-field evaluations" in out and "total wall time" in out


def test_demo_main_nonfinite_exit_code(monkeypatch, capsys):
    monkeypatch.setattr(_cli, "run_demo", lambda *a, **k: [dict(pillar="pde", value=float("nan"), steps_or_nfe=1)])
    assert _cli.main(["demo", "--no-progress"]) == 1


def test_bad_arguments():
    with pytest.raises(SystemExit):
        _cli.main(["demo", "--pillar", "nope"])
    with pytest.raises(ValueError, match="pillar"):
        _cli.run_demo(["nope"])
    with pytest.raises(ValueError, match="size"):
        _cli.run_demo(["ode"], size="huge")


def test_console_script_installed():
    (ep,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "jaxsciml"]
    assert ep.value == "jaxsciml._cli:main"
    res = subprocess.run([sys.executable, "-m", "jaxsciml", "version"], capture_output=True, text=True, check=True)
    assert res.stdout.startswith("jaxsciml ") and "jax " in res.stdout


def test_version_flag(capsys):
    from jaxsciml import __version__

    with pytest.raises(SystemExit) as e:
        _cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"jaxsciml {__version__}"


def test_out_without_matplotlib_fails_before_training(monkeypatch):
    real_import = importlib.import_module

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib":
            raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
        return real_import(name, *args, **kwargs)

    def must_not_train(*args, **kwargs):
        raise AssertionError("training started although plotting is impossible")

    monkeypatch.setattr(_cli.importlib, "import_module", no_matplotlib)
    monkeypatch.setattr(_cli, "run_demo", must_not_train)
    with pytest.raises(SystemExit, match="matplotlib"):
        _cli.main(["demo", "--out", "somewhere", "--no-progress"])


def test_help_states_demo_sizes(capsys):
    with pytest.raises(SystemExit):
        _cli.main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "small" in out and "medium" in out and "minute" in out
