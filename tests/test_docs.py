"""The documentation site builds with ``mkdocs build --strict`` and covers the public API, results and notebooks.

The build (about 5-10 s on 2 CPU cores) runs once per session into a temporary folder; the notebooks are rendered
without executing them (CI already executes them with ``pytest --nbmake``). Every ``python`` block of the
getting-started pages is executed here, as the README's are by ``tests/test_readme.py``.
"""

import html
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = ("ode", "pde", "optim", "train")
RESULTS = ROOT / "benchmarks" / "results"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
GUIDES = sorted((ROOT / "docs" / "getting-started").glob("*.md"))
BLOCKS = [(p, i, c) for p in GUIDES for i, c in enumerate(re.findall(r"```python\n(.*?)```", p.read_text(), re.S))]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs")
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", JAXSCIML_DOCS_EXECUTE="false")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, f"mkdocs build --strict failed:\n{res.stdout}\n{res.stderr}"
    return out


def _page(site: Path, uri: str) -> str:
    path = site / uri / "index.html"
    assert path.exists(), f"{uri} was not built"
    return path.read_text()


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_every_public_name_has_an_api_entry(site, sub):
    page = _page(site, f"api/{sub}")
    names = importlib.import_module(f"jaxsciml.{sub}").__all__
    missing = [n for n in names if f'id="jaxsciml.{sub}.{n}"' not in page]
    assert not missing, f"api/{sub}: no rendered entry for {missing}"
    # Sphinx roles in docstrings were turned into links or code, none is left as raw text.
    assert not re.search(r":(func|class|meth|mod|attr):`", html.unescape(page)), f"api/{sub}: raw Sphinx role"


def test_api_cross_references_resolve(site):
    page = _page(site, "api/optim")
    # `:func:`scale_by_shampoo`` in shampoo's docstring links to its entry on the same page.
    assert re.search(r'<a class="autorefs autorefs-internal"[^>]*href="#jaxsciml\.optim\.scale_by_shampoo"', page)


def test_results_pages_and_plots(site):
    names = [p.stem for p in RESULTS.glob("*.md")]
    assert names
    for name in names:
        page = _page(site, f"results/{name}")
        png = RESULTS / f"{name}.png"
        if png.exists() and name != "SUMMARY":
            assert (site / "results" / f"{name}.png").read_bytes() == png.read_bytes()
            assert f'src="../{name}.png"' in page, f"results/{name}: plot not shown"
    # the tables are rendered as tables, not as literal text
    assert "<table>" in _page(site, "results/shampoo")


def test_notebook_and_changelog_pages(site):
    for nb in NOTEBOOKS:
        page = _page(site, f"notebooks/{nb.stem}")
        assert "jp-Notebook" in page or "jupyter-wrapper" in page, nb.name
    changelog = _page(site, "changelog")
    assert "Unreleased" in changelog
    version = importlib.import_module("jaxsciml").__version__
    assert f"[{version}]" in changelog, f"CHANGELOG.md has no section for the package version {version}"


def test_math_is_marked_for_mathjax(site):
    page = _page(site, "getting-started/ode")
    assert 'class="arithmatex"' in page
    assert "mathjax" in page.lower()


@pytest.mark.parametrize("path,i,code", BLOCKS, ids=[f"{p.stem}-{i}" for p, i, _ in BLOCKS])
def test_getting_started_block_runs(path, i, code):
    readme = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    if code in readme:
        pytest.skip("the same block is in README.md, executed by tests/test_readme.py")
    exec(compile(code, f"{path.relative_to(ROOT)}[python block {i}]", "exec"), {"__name__": f"docs_{path.stem}_{i}"})
