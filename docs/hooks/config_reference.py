"""MkDocs hook: the configuration reference, generated from the config dataclasses at build time.

`docs/configuration.md` holds the marker `<!-- config-reference -->`; this hook replaces it with
one table per section of `ptncn_dist.config.SECTIONS` (key, type, default, description). The
description of a key is the attribute docstring written under its field in the code (the string
literal on the line after `name: type = default`), found with `ast` in the class that defines the
field (a field inherited from a base class, such as `LayerHyper`'s, is read from the base). A key
without one is listed as undocumented and logged as a warning, which fails `mkdocs build --strict`:
the page cannot fall behind the code.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import logging
import textwrap
import typing

MARKER = "<!-- config-reference -->"
log = logging.getLogger("mkdocs.plugins.config_reference")


def _class_node(cls) -> ast.ClassDef | None:
    source = inspect.getsource(inspect.getmodule(cls))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            return node
    return None


def field_docs(cls) -> dict[str, str]:
    """{field name: its attribute docstring} over `cls` and its dataclass bases (nearest wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        node = _class_node(klass)
        if node is None:
            continue
        body = node.body
        for stmt, after in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[stmt.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def _type_name(tp) -> str:
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return f"list[{_type_name(item)}]"
    return getattr(tp, "__name__", str(tp))


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def section_table(section: str, cls) -> tuple[str, list[str]]:
    """The Markdown table of one section, and the keys that have no description."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    rows, missing = [], []
    for f in dataclasses.fields(cls):
        doc = docs.get(f.name, "")
        if not doc:
            missing.append(f"{section}.{f.name}")
            doc = "**undocumented**: add a docstring under this field in the code"
        rows.append(f"| `{section}.{f.name}` | `{_type_name(hints[f.name])}` | `{_default(f)}` | {_cell(doc)} |")
    intro = " ".join(inspect.cleandoc(cls.__doc__ or "").split())
    where = f"`{cls.__module__}.{cls.__qualname__}`"
    head = [f"## `[{section}]`", "", f"{intro} Defined in {where}." if intro else f"Defined in {where}.", "",
            "| key | type | default | description |", "|---|---|---|---|"]
    return "\n".join(head + rows) + "\n", missing


def reference() -> tuple[str, list[str]]:
    from ptncn_dist.config import SECTIONS
    parts, missing = [], []
    for section, cls in SECTIONS.items():
        table, gaps = section_table(section, cls)
        parts.append(table)
        missing += gaps
    return "\n".join(parts), missing


def on_page_markdown(markdown: str, page, config, files, **kwargs):
    if page.file.src_uri != "configuration.md":
        return markdown
    if MARKER not in markdown:
        log.warning("configuration.md has no %s marker: the config reference was not generated", MARKER)
        return markdown
    text, missing = reference()
    for key in missing:
        log.warning("config key %s has no description: write a docstring under its field", key)
    return markdown.replace(MARKER, textwrap.dedent(text))
