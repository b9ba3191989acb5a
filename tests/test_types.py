"""A user's type checker trusts jaxsciml: mypy and pyright (basic mode), configured in pyproject.toml, report no errors
on `jaxsciml/`, on every ```python block of README.md (each block its own module, as tests/test_readme.py runs them) and
on tests/typecheck_public.py, whose `assert_type` lines pin the static types of public results (`FitResult[Model]`,
`ODEOutput[Array]`, ...), so a result that degrades to `Any` fails here. Where jaxsciml is installed (CI: the README's
`pip install -e ".[test]"`), mypy run outside the checkout must find it there."""

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def targets(tmp_path_factory) -> list[str]:
    blocks = re.findall(r"```python[^\n]*\n(.*?)```", README.read_text(), flags=re.S)
    where = tmp_path_factory.mktemp("readme_blocks")
    paths = []
    for i, code in enumerate(blocks):
        path = where / f"readme_block_{i}.py"
        path.write_text(code)
        paths.append(str(path))
    return ["jaxsciml", "tests/typecheck_public.py", *paths]


def _run(args: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_mypy(targets, tmp_path):
    pytest.importorskip("mypy")
    res = _run(["mypy", "--config-file", "pyproject.toml", "--cache-dir", str(tmp_path / "mypy_cache"), *targets])
    assert res.returncode == 0 and "Success: no issues found" in res.stdout, res.stdout + res.stderr


def test_pyright(targets):
    pytest.importorskip("pyright")
    res = _run(["pyright", "--pythonpath", sys.executable, *targets])
    assert res.returncode == 0 and "0 errors" in res.stdout, res.stdout + res.stderr


def test_installed_package_is_visible_to_mypy(tmp_path):
    """setuptools' default editable install is an import hook that type checkers cannot follow; pyproject.toml's
    `package-dir` makes it a plain path entry. Checked from a directory outside the checkout, without PYTHONPATH."""
    pytest.importorskip("mypy")
    try:
        importlib.metadata.distribution("jaxsciml")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("jaxsciml is not installed in this environment (run from the checkout)")
    user = tmp_path / "user_code.py"
    user.write_text("from jaxsciml import train\n\nreveal_type(train.fit)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    res = _run(["mypy", "--no-incremental", "--cache-dir", os.devnull, str(user)], cwd=tmp_path, env=env)
    assert res.returncode == 0 and "FitResult[ModelT" in res.stdout, res.stdout + res.stderr
