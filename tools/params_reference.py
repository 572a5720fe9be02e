"""Writes docs/params.md, the reference of every key of params.yaml, from the files that define them.

Nothing in the reference is written by hand, so it cannot drift from the code:

- the keys, their order and their values come from params.yaml, and each key's comment there;
- the type, the bounds (`ge`, `gt`, `le`, `lt`) or choices, the code default and the comments beside
  each field come from the typed params in pipeline/config.py;
- which stages read a section comes from the `params` lists of dvc.yaml.

Run it as `make params-reference` (or `python tools/params_reference.py`) after changing params.yaml
or config.py; tests/test_docs.py fails while docs/params.md differs from what this script writes.
`--check` exits with status 1 instead of writing when the file is out of date.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import sys
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import config  # noqa: E402  (after the repository root is on the path)

OUTPUT = ROOT / "docs" / "params.md"
RULES = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


# --- params.yaml: keys, values and comments in file order ------------------------------------------


def yaml_keys(text: str) -> dict[str, str]:
    """Dotted key -> its comment on the same line, for every key of a block-style YAML file, in order."""
    keys: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, name) of the open mappings
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        indent = len(line) - len(line.lstrip(" "))
        name = stripped.split(":", 1)[0].strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([n for _, n in stack] + [name])
        keys[dotted] = comment_of(stripped)
        stack.append((indent, name))
    return keys


def comment_of(line: str) -> str:
    """The comment at the end of a YAML line (a `#` after whitespace, outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if char in "'\"" and quote in (None, char):
            quote = None if quote else char
        elif char == "#" and quote is None and (i == 0 or line[i - 1] in " \t"):
            return line[i + 1 :].strip()
    return ""


def flatten(raw: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf key -> value (a mapping is a section, not a leaf)."""
    leaves: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            leaves.update(flatten(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


# --- pipeline/config.py: the typed fields and the comments beside them --------------------------------


def field_comments(source: str) -> dict[tuple[str, str], str]:
    """(dataclass name, field name) -> the comments above the field (up to a blank line) and on its line."""
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found: dict[tuple[str, str], str] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for statement in node.body:
            if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
                continue
            above, line = [], statement.lineno - 1
            while line >= 1 and lines[line - 1].strip().startswith("#"):
                above.insert(0, comments[line])
                line -= 1
            inline = [
                comments[n]
                for n in range(statement.lineno, statement.end_lineno + 1)
                if n in comments and not lines[n - 1].strip().startswith("#")
            ]
            text = " ".join(part for part in [*above, *inline] if part and not part.startswith("noqa"))
            found[(node.name, statement.target.id)] = text
    return found


def type_text(hint: Any) -> str:
    """A reader's name for a field's type: `integer`, `number or null`, `one of: a, b`, `list of: a, b`."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of: " + ", ".join(f"`{value}`" for value in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        names = [type_text(o) for o in options if o is not type(None)]
        if type(None) in options:
            names.append("`null`")
        return " or ".join(name.removeprefix("one of: ") for name in names)
    if origin is list:
        return "list of " + type_text(typing.get_args(hint)[0]).replace("one of: ", "")
    return {int: "integer", float: "number", bool: "`true` / `false`", str: "string"}.get(hint, str(hint))


def rules_text(metadata: typing.Mapping) -> str:
    parts = [f"{text} {metadata[rule]}" for rule, text in RULES if rule in metadata]
    if "choices" in metadata:
        parts.append("one of: " + ", ".join(f"`{value}`" for value in metadata["choices"]))
    return ", ".join(parts)


def shown(value: Any) -> str:
    """A value as params.yaml spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    return str(value)


@dataclasses.dataclass
class Row:
    key: str
    value: Any
    code_default: Any
    kind: str
    bounds: str
    yaml_comment: str
    code_comment: str
    in_yaml: bool = True


def rows_of(
    cls: type,
    prefix: str,
    yaml_values: dict[str, Any],
    yaml_comments: dict[str, str],
    code_comments: dict[tuple[str, str], str],
) -> list[Row]:
    """One row per leaf field of a params dataclass, in params.yaml's order, then the fields it lacks."""
    hints = typing.get_type_hints(cls)
    rows: list[Row] = []
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(hints[field.name]):
            rows += rows_of(hints[field.name], key + ".", yaml_values, yaml_comments, code_comments)
            continue
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        rows.append(
            Row(
                key,
                yaml_values.get(key, default),
                default,
                type_text(hints[field.name]),
                rules_text(field.metadata),
                yaml_comments.get(key, ""),
                code_comments.get((cls.__name__, field.name), ""),
                in_yaml=key in yaml_values,
            )
        )
    order = list(yaml_comments)
    return sorted(rows, key=lambda row: order.index(row.key) if row.key in order else len(order))


def stages_reading(dvc_yaml: dict) -> dict[str, list[str]]:
    """Section -> the stages whose `params` list names it."""
    readers: dict[str, list[str]] = {}
    for stage, spec in dvc_yaml["stages"].items():
        for entry in spec.get("params", []):
            for name in entry if isinstance(entry, dict) else [entry]:
                readers.setdefault(str(name).split(".")[0], []).append(stage)
    return readers


def cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


# --- the page ----------------------------------------------------------------------------------


def reference(root: Path = ROOT) -> str:
    yaml_text = (root / "params.yaml").read_text(encoding="utf-8")
    yaml_comments = yaml_keys(yaml_text)
    yaml_values = flatten(yaml.safe_load(yaml_text))
    code_comments = field_comments(Path(config.__file__).read_text(encoding="utf-8"))
    readers = stages_reading(yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8")))
    hints = typing.get_type_hints(config.Params)

    out = [
        "# Parameters",
        "",
        "<!-- Generated by tools/params_reference.py from params.yaml, pipeline/config.py and dvc.yaml;",
        "     do not edit: run `make params-reference`. -->",
        "",
        "Every key of `params.yaml`, in its order: the value there (the default a run uses), the type and",
        "the bounds or choices that `pipeline/config.py` checks before any stage runs (a value outside",
        "them stops the stage with one line naming the key), and the comments of both files. A key left",
        "out of `params.yaml` takes the code default; an unknown key is an error. Where a stage's",
        "params are explained at length: [stages.md](stages.md). Try a value without editing the file:",
        "`dvc exp run -S train.max_epochs=30`.",
        "",
    ]
    for field in dataclasses.fields(config.Params):
        section = field.name
        stages = readers.get(section, [])
        out.append(f"## `{section}`")
        out.append("")
        read_by = f"Read by {', '.join(f'`{s}`' for s in stages)} (dvc.yaml)." if stages else "Read by no stage."
        if yaml_comments.get(section):
            read_by += f" params.yaml: {yaml_comments[section]}."
        out.append(read_by)
        out.append("")
        out.append("| key | value | type | bounds | params.yaml says | pipeline/config.py says |")
        out.append("|---|---|---|---|---|---|")
        if dataclasses.is_dataclass(hints[section]):
            rows = rows_of(hints[section], section + ".", yaml_values, yaml_comments, code_comments)
        else:
            default = field.default
            rows = [
                Row(
                    section,
                    yaml_values.get(section, default),
                    default,
                    type_text(hints[section]),
                    rules_text(field.metadata),
                    yaml_comments.get(section, ""),
                    code_comments.get(("Params", section), ""),
                    in_yaml=section in yaml_values,
                )
            ]
        for row in rows:
            value = f"`{shown(row.value)}`"
            if not row.in_yaml:
                value += " (not in params.yaml: the code default)"
            elif row.value != row.code_default:
                value += f" (code default `{shown(row.code_default)}`)"
            code_comment = "" if row.code_comment == row.yaml_comment else row.code_comment
            out.append(
                f"| `{row.key}` | {value} | {cell(row.kind)} | {cell(row.bounds)} | "
                f"{cell(row.yaml_comment)} | {cell(code_comment)} |"
            )
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/params.md is out of date")
    args = parser.parse_args(argv)
    text = reference()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.is_file() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date: run `make params-reference`", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
