"""Griffe extension for the docs build: turns the Sphinx roles used in jaxsciml's docstrings into links.

``:func:`shampoo``` (also ``:class:``, ``:meth:``, ``:attr:``, ``:mod:``, ``:data:``, ``:obj:``, with an optional
``~`` prefix) becomes an *optional* mkdocs-autorefs cross-reference to ``jaxsciml.<subpackage>.shampoo``: a link
where that object is rendered on an API page, plain code otherwise (e.g. private modules), never a broken link.
A reST literal-block marker (a line ending in ``::``) becomes a single colon; the indented block that follows is a
Markdown code block already.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|obj|exc):`(~?)([^`]+)`")
_LITERAL = re.compile(r"(\S)::[ \t]*$", flags=re.M)  # reST "Example::" before an indented block


def _identifier(target: str, path: str, scope: griffe.Object | None = None) -> str:
    """``jaxsciml.*`` targets as given; a member of the enclosing class (``scope``) by its path; else the name in
    the subpackage (``jaxsciml.<pkg>.<target>``, where the API pages render it)."""
    if target.startswith("jaxsciml.") or target == "jaxsciml":
        return target
    if scope is not None and target.split(".")[0] in scope.members:
        return f"{scope.path}.{target}"
    parts = path.split(".")
    package = ".".join(parts[:2]) if len(parts) > 1 else parts[0]
    return f"{package}.{target}"


def convert(text: str, path: str, scope: griffe.Object | None = None) -> str:
    """Replace the roles in docstring ``text`` of the object at ``path`` (inside class ``scope``, if any)."""

    def sub(m: re.Match) -> str:
        tilde, target = m.group(1), m.group(2).strip()
        shown = target.rsplit(".", 1)[-1] if tilde else target
        ident = _identifier(target, path, scope)
        return f'<autoref identifier="{ident}" optional><code>{shown}</code></autoref>'

    return _LITERAL.sub(r"\1:", _ROLE.sub(sub, text))


class SphinxRoles(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ":" in obj.docstring.value:  # roles and "::" both contain a colon
            scope = obj if obj.is_class else obj.parent if obj.parent is not None and obj.parent.is_class else None
            obj.docstring.value = convert(obj.docstring.value, obj.path, scope)
