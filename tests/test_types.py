"""A user's type checker trusts jaxsciml: mypy and pyright (basic mode), configured in pyproject.toml, report no errors
on `jaxsciml/`, on every ```python block of README.md (each block its own module, as tests/test_readme.py runs them) and
on tests/typecheck_public.py, whose `assert_type` lines pin the static types of public results (`FitResult[Model]`,
`ODEOutput[Array]`, ...), so a result that degrades to `Any` fails here."""

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


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_mypy(targets, tmp_path):
    pytest.importorskip("mypy")
    res = _run(["mypy", "--config-file", "pyproject.toml", "--cache-dir", str(tmp_path / "mypy_cache"), *targets])
    assert res.returncode == 0 and "Success: no issues found" in res.stdout, res.stdout + res.stderr


def test_pyright(targets):
    pytest.importorskip("pyright")
    res = _run(["pyright", "--pythonpath", sys.executable, *targets])
    assert res.returncode == 0 and "0 errors" in res.stdout, res.stdout + res.stderr
