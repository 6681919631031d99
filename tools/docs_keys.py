#!/usr/bin/env python3
"""Print or write ``docs/keys.md``: every config key of every experiment kind, from its schema.

    python tools/docs_keys.py            # print the reference
    python tools/docs_keys.py --write    # write docs/keys.md
    python tools/docs_keys.py --check    # exit 1 when docs/keys.md is not current

Each kind's ``Schema`` (``kind_named(name).schema``) lists its keys; each key's type and default
come from its dataclass field, its description from the comment beside the field (a trailing
comment and its ``#   `` continuation lines, else the comment block right above it) and its
choices from the distillation config's ``CHOICES``. ``tests/test_docs.py`` checks that the
committed file equals a fresh generation, so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import io
import sys
import textwrap
import tokenize
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KEYS_MD = ROOT / "docs" / "keys.md"
KINDS = (("dfkd", "Distillation", "the default: a file without `kind:`"),
         ("skdcgn", "SKDCGN", "`kind: skdcgn`"))
# where the experiment kinds' registry (``kind_named``) lives, newest home first
KIND_MODULES = ("kdci_ray.experiments", "kdci_ray.experiments.kinds", "kdci_ray.engine.kinds")
CONTINUATION = "#   "  # a comment line continuing the comment of the field above it


def kind_named(name: str) -> Any:
    """The experiment kind ``name`` from whichever module holds the registry."""
    sys.path.insert(0, str(ROOT))  # run from the source tree, installed or not
    for module in KIND_MODULES:
        try:
            found = getattr(importlib.import_module(module), "kind_named", None)
        except ModuleNotFoundError as exc:
            if exc.name and (module + ".").startswith(exc.name + "."):
                continue  # this home does not exist (yet, or any more)
            raise  # the module exists but something it imports does not
        if found is not None:
            return found(name)
    raise ImportError(f"no kind registry (kind_named) in any of {', '.join(KIND_MODULES)}")


def schema_of(kind: str) -> Any:
    """The ``Schema`` of experiment kind ``kind`` (``dfkd`` | ``skdcgn``)."""
    return kind_named(kind).schema


def choices_of(schema: Any) -> dict[str, tuple[str, ...]]:
    """``CHOICES`` of the module defining the schema's root dataclass ({} where it has none)."""
    return dict(getattr(sys.modules[schema.root.__module__], "CHOICES", {}))


# ----------------------------------------------------------------------------- field comments


def _comment_text(line: str) -> str:
    text = line.strip().lstrip("#").strip()
    return "" if text.startswith(("fmt:", "noqa")) else text


def field_comments(cls: type, section: str = "") -> dict[str, str]:
    """Field name -> the comment beside it in ``cls``'s source ("" where it has none); a field
    right below one whose comment block above covers it too gets "see `section.that_field`"."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    own_line: dict[int, str] = {}  # line number -> a comment alone on its line
    trailing: dict[int, str] = {}  # line number -> a comment after code
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            line = tok.start[0]
            (own_line if lines[line - 1].lstrip().startswith("#") else trailing)[line] = tok.string
    body = ast.parse(source).body[0].body
    fields = [n for n in body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    out: dict[str, str] = {}
    block_owner = ""  # the field whose block comment above also covers the fields right after
    previous_end = -1
    for node in fields:
        name, start, end = node.target.id, node.lineno, node.end_lineno or node.lineno
        after = [trailing[i] for i in range(start, end + 1) if i in trailing]
        text: list[str] = []
        if after:
            text = [_comment_text(after[-1])]
            line = end + 1
            while own_line.get(line, "").startswith(CONTINUATION):
                text.append(_comment_text(own_line[line]))
                line += 1
            block_owner = ""
        else:
            line, block = start - 1, []
            while line in own_line and not own_line[line].startswith(CONTINUATION):
                block.insert(0, _comment_text(own_line[line]))
                line -= 1
            if block:
                text, block_owner = block, name
            elif block_owner and start == previous_end + 1:
                text = [f"see `{f'{section}.' if section else ''}{block_owner}`"]
            else:
                block_owner = ""
        out[name] = " ".join(t for t in text if t)
        previous_end = end
    return out


# ----------------------------------------------------------------------------- cells


def type_name(typ: Any) -> str:
    if isinstance(typ, type):
        return typ.__name__
    return str(typ).replace("typing.", "")


def default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def yaml_value(value: Any) -> str:
    """A default as one writes it in an experiment YAML."""
    if value is dataclasses.MISSING:
        return "(required)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    return repr(value)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def section_doc(cls: type) -> str:
    """The first paragraph of a section dataclass's own docstring, as Markdown ("" for none)."""
    doc = cls.__doc__ or ""
    if not doc or doc.startswith(cls.__name__ + "("):  # the one dataclass writes itself
        return ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split()).replace("``", "`")


# ----------------------------------------------------------------------------- the page


def section_table(section: str, cls: type, choices: dict[str, tuple[str, ...]],
                  names: tuple[str, ...] | None = None) -> list[str]:
    """The Markdown table of one section's keys (``section`` "" = top-level keys)."""
    comments = field_comments(cls, section)
    hints = typing.get_type_hints(cls)
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for field in dataclasses.fields(cls):
        if names is not None and field.name not in names:
            continue
        key = f"{section}.{field.name}" if section else field.name
        typ = type_name(hints[field.name])
        if key in choices:
            typ += f" ({', '.join(choices[key])})"
        rows.append(f"| `{key}` | {cell(typ)} | `{cell(yaml_value(default_of(field)))}` | "
                    f"{cell(comments.get(field.name, ''))} |")
    return rows


def kind_page(kind: str, title: str, how: str) -> list[str]:
    schema = schema_of(kind)
    choices = choices_of(schema)
    lines = [f"## {title} ({how})", ""]
    lines += ["### Top level", "", *section_table("", schema.root, choices, schema.top_level), ""]
    extra = dict(schema.extra_sections())
    for section, cls in schema.sections.items():
        doc = section_doc(cls)
        lines += [f"### `{section}`", ""] + ([doc, ""] if doc else [])
        lines += [*section_table(section, cls, choices), ""]
    if extra:
        lines += ["### Method sections", "",
                  "One section per DFKD method, its paper's defaults; a run reads only its "
                  "`method`'s section, and `preset: embedded` replaces some of these values "
                  "with the method's embedded-scale schedule (in its method file).", ""]
        for section, cls in extra.items():
            doc = section_doc(cls)
            lines += [f"#### `{section}`", ""] + ([doc, ""] if doc else [])
            lines += [*section_table(section, cls, choices), ""]
    if schema.renamed:
        lines += ["### Retired keys", "", "Refused with their new name.", "",
                  "| old key | new key |", "|---|---|"]
        lines += [f"| `{old}` | `{new}` |" for old, new in sorted(schema.renamed.items())]
        lines.append("")
    return lines


def render() -> str:
    lines = ["# Config key reference", "",
             "<!-- generated by `python tools/docs_keys.py --write` from the config schemas; "
             "tests/test_docs.py checks it is current: do not edit by hand -->", "",
             "Every key an experiment YAML, a `key=value` override or a `search` section may "
             "set, per experiment kind: its type (with its choices where it takes one of a few "
             "names), its default and the comment beside it in the code. `kind` (which kind a "
             "file is) and `search` (the grid) are not keys of a run: see "
             "[configuration](configuration.md), which also says how the layers combine.", ""]
    for kind, title, how in KINDS:
        lines += kind_page(kind, title, how)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write {KEYS_MD.relative_to(ROOT)}")
    group.add_argument("--check", action="store_true", help="exit 1 when it is not current")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        KEYS_MD.parent.mkdir(parents=True, exist_ok=True)
        KEYS_MD.write_text(text)
        print(f"wrote {KEYS_MD}")
    elif args.check:
        if not KEYS_MD.is_file() or KEYS_MD.read_text() != text:
            print(f"{KEYS_MD} is not current: run python tools/docs_keys.py --write")
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
