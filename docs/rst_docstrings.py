"""A Griffe extension for the docs site: nasbert's docstrings as Markdown.

nasbert's docstrings are prose written with reStructuredText habits: ``double
backticks``, roles such as :class:`~nasbert.run.RunDir`, literal blocks introduced by
``::`` and doctest lines. mkdocstrings renders docstrings as Markdown, where those read
badly (doctest lines become nested quotes, ``x["a"]["b"]`` a broken link). This rewrites
them when Griffe loads the source, so that the source stays as it is:

- a role becomes inline code (``:class:`~a.b.C``` -> ``C``, ``:func:`a.b``` -> ``a.b``);
- a paragraph ending in ``::`` ends in ``:``, and the indented block after it becomes a
  fenced code block;
- a run of doctest lines (``>>>`` up to the next blank line) becomes a fenced ``pycon``
  block, without its ``# doctest:`` flags.

Loaded by ``mkdocs.yml`` (``plugins: mkdocstrings: handlers: python: options:
extensions``); nothing in the package imports it.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|obj|exc):`(~?)([^`]+)`")
_FLAG = re.compile(r"\s*# doctest:.*$")


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def to_markdown(text: str) -> str:
    """The docstring ``text`` with its reStructuredText habits rewritten as Markdown."""
    lines = _ROLE.sub(_role, text).split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith(">>>"):
            pad = " " * _indent(line)
            out += [pad + "```pycon"]
            while i < len(lines) and lines[i].strip():
                out.append(_FLAG.sub("", lines[i]))
                i += 1
            out += [pad + "```"]
            continue
        if stripped.endswith("::") and not stripped.startswith(".."):
            base = _indent(line)
            head = line.rstrip()[:-1].rstrip(" :") if stripped != "::" else ""
            if head.strip():
                out.append(head + ":")
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            block_end = j
            while block_end < len(lines) and (not lines[block_end].strip()
                                              or _indent(lines[block_end]) > base):
                block_end += 1
            while block_end > j and not lines[block_end - 1].strip():
                block_end -= 1
            block = lines[j:block_end]
            if block:
                cut = min(_indent(b) for b in block if b.strip())
                pad = " " * base
                out += ["", pad + "```text"]
                out += [pad + b[cut:] if b.strip() else "" for b in block]
                out += [pad + "```"]
                i = block_end
                continue
            i += 1
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class RstDocstrings(Extension):
    """Rewrite every docstring Griffe loads with :func:`to_markdown`."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
