"""mkdocs hook for the jaxsciml site.

- adds pages that live outside ``docs/``: ``notebooks/*.ipynb`` (rendered by mkdocs-jupyter), one page per
  ``benchmarks/results/*.md`` with its plot (``<name>.png``) and ``CHANGELOG.md``, so the site cannot drift from
  them;
- lists the results pages in the navigation under "Results";
- warns (an error under ``mkdocs build --strict``) when a name in the ``__all__`` of ``jaxsciml.ode``, ``.pde``,
  ``.optim`` or ``.train`` has no ``::: jaxsciml.<pkg>.<name>`` entry on ``docs/api/<pkg>.md``.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import tempfile
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.jaxsciml_docs")

ROOT = Path(__file__).resolve().parents[2]
SUBPACKAGES = ("ode", "pde", "optim", "train")
RESULTS = ROOT / "benchmarks" / "results"


def public_names(subpackage: str) -> list[str]:
    """The literal ``__all__`` of ``jaxsciml/<subpackage>/__init__.py`` (read without importing jax)."""
    tree = ast.parse((ROOT / "jaxsciml" / subpackage / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise ValueError(f"jaxsciml/{subpackage}/__init__.py has no literal __all__")


def api_entries(text: str, subpackage: str) -> set[str]:
    return set(re.findall(rf"^:::\s+jaxsciml\.{subpackage}\.(\w+)\s*$", text, flags=re.M))


def results_names() -> list[str]:
    names = sorted(p.stem for p in RESULTS.glob("*.md") if p.stem != "SUMMARY")
    if (RESULTS / "SUMMARY.md").exists():
        names.append("SUMMARY")
    return names


def on_config(config):
    jupyter = config["plugins"].get("mkdocs-jupyter")
    if jupyter is not None and jupyter.config["execute"]:
        # Executed notebooks: figures inline (not a non-interactive backend such as CI's Agg), files they save into
        # a temporary folder rather than the checkout.
        os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
        os.environ.setdefault("JAXSCIML_FIGURES", tempfile.mkdtemp(prefix="jaxsciml-docs-figures-"))
    nav = config.get("nav") or []
    for i, item in enumerate(nav):
        if isinstance(item, dict) and item.get("Results") == "results/index.md":
            pages = [{"Overview": "results/index.md"}]
            for n in results_names():
                pages.append({("all tables (SUMMARY.md)" if n == "SUMMARY" else n): f"results/{n}.md"})
            nav[i] = {"Results": pages}
    return config


def _brackets_as_text(text: str) -> str:
    """``[...]`` in the results' headings and tables is text, not an (autorefs) reference: written as HTML entities
    outside code spans; links and images (``[...](...)``) are kept."""
    parts = re.split(r"(`+[^`]*`+)", text)
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"\[([^\[\]]*)\](?!\()", r"&#91;\1&#93;", parts[i])
    return "".join(parts)


def _results_page(name: str) -> str:
    text = _brackets_as_text((RESULTS / f"{name}.md").read_text())
    source = f"benchmarks/results/{name}.md"
    note = f"\n\n*This page is `{source}` as written by `benchmarks/run.py`.*\n"
    lines = text.splitlines()
    if lines and lines[0].startswith("# "):
        text = "\n".join([lines[0], note, *lines[1:]]) + "\n"
    else:
        text = f"# {name}\n{note}\n{text}"
    if name != "SUMMARY" and (RESULTS / f"{name}.png").exists() and f"{name}.png" not in text:
        text += f"\n## Plot\n\n![{name}]({name}.png)\n"
    return text


@event_priority(100)  # before mkdocs-jupyter wraps the notebooks
def on_files(files: Files, config) -> Files:
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        # A plain File rooted at the repository (mkdocs-jupyter's wrapper reads src_dir, not a generated path).
        files.append(File(f"notebooks/{nb.name}", str(ROOT), config["site_dir"], config["use_directory_urls"]))
    for name in results_names():
        files.append(File.generated(config, f"results/{name}.md", content=_results_page(name)))
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"results/{png.name}", abs_src_path=str(png)))
    changelog = ROOT / "CHANGELOG.md"
    files.append(File.generated(config, "changelog.md", content=changelog.read_text()))

    for sub in SUBPACKAGES:
        page = Path(config["docs_dir"]) / "api" / f"{sub}.md"
        have = api_entries(page.read_text(), sub)
        names = public_names(sub)
        missing = [n for n in names if n not in have]
        extra = sorted(have - set(names))
        if missing:
            log.warning("docs/api/%s.md has no '::: jaxsciml.%s.NAME' entry for: %s", sub, sub, ", ".join(missing))
        if extra:
            log.warning("docs/api/%s.md documents names not in jaxsciml.%s.__all__: %s", sub, sub, ", ".join(extra))
    return files
