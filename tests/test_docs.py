"""The documentation: the README and docs/ describe the software and its evidence, and stay current.

- no page speaks of how the repository was made (the word "session", and a few phrases like it);
- every relative link (files and #anchors) and every figure shown resolves, and figures are in git;
- each docs page has one H1, and the README stays a ten-minute read with the answer and the
  commands on its first screen;
- docs/params.md is what tools/params_reference.py writes, and names exactly the keys there are;
- every error a user can meet (ConfigError, InputError, GateError raised in pipeline/) has a row in
  the README's troubleshooting table.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
PAGES = [README, REPO_ROOT / "CONTRIBUTING.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
ORDINALS = r"(first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|\d+(st|nd|rd|th))"
MAKING = re.compile(rf"session|the issue's|before the redesign|the {ORDINALS} machine", re.IGNORECASE)
ERRORS = {"ConfigError", "InputError", "GateError"}
README_MAX_LINES = 250


def rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def prose(text: str) -> str:
    """The text without fenced code blocks (links and headings there are not markdown)."""
    return re.sub(r"(?ms)^```.*?^```", "", text)


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    for heading in re.findall(r"(?m)^#{1,6} +(.+?) *#*$", prose(page.read_text(encoding="utf-8"))):
        anchor = github_anchor(heading)
        count = seen.get(anchor, 0)
        found.add(anchor if count == 0 else f"{anchor}-{count}")
        seen[anchor] = count + 1
    return found


def links(page: Path) -> list[str]:
    """Every link and image target of a page: [text](target), ![alt](target), <img src> and <a href>."""
    text = re.sub(r"`[^`\n]*`", "", prose(page.read_text(encoding="utf-8")))  # inline code is not a link
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    targets += re.findall(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", text)
    return targets


def figures(page: Path) -> list[str]:
    text = re.sub(r"`[^`\n]*`", "", prose(page.read_text(encoding="utf-8")))
    return re.findall(r"!\[[^\]]*\]\(([^)\s]+)", text) + re.findall(r"<img\b[^>]*?\bsrc=\"([^\"]+)\"", text)


def tracked() -> set[str] | None:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None  # not a git checkout: the existence check still runs
    return set(out.splitlines())


# --- how the repository was made -----------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_no_page_speaks_of_how_the_repository_was_made(page):
    lines = page.read_text(encoding="utf-8").splitlines()
    hits = [f"{rel(page)}:{n}: {line.strip()}" for n, line in enumerate(lines, 1) if MAKING.search(line)]
    assert not hits, "date results by commit hash and date instead:\n" + "\n".join(hits)


# --- links, anchors, figures ---------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:, data:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.is_file() and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {rel(dest)}")
        elif anchor and dest.is_dir() and (dest / "README.md").is_file() and anchor not in anchors(dest / "README.md"):
            broken.append(f"{target}: no heading with that anchor in {rel(dest / 'README.md')}")
    assert not broken, f"{rel(page)}:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_figure_shown_is_in_the_repository(page):
    files = tracked()
    for target in figures(page):
        path = (page.parent / target).resolve()
        assert path.is_file(), f"{rel(page)} shows {target}, which does not exist"
        if files is not None:
            assert rel(path) in files, f"{rel(page)} shows {target}, which git does not track (a DVC output?)"


def test_the_link_checker_sees_a_broken_link_and_anchor(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## A `code` heading, with punctuation\n\n[ok](#a-code-heading-with-punctuation) "
        "[bad](#nowhere) [gone](missing.md) `[code](not-a-link.md)`\n\n![fig](fig.png)\n",
        encoding="utf-8",
    )
    assert links(page) == ["#a-code-heading-with-punctuation", "#nowhere", "missing.md", "fig.png"]
    assert anchors(page) == {"title", "a-code-heading-with-punctuation"}
    assert figures(page) == ["fig.png"]


# --- shape of the pages --------------------------------------------------------------------------


@pytest.mark.parametrize("page", [p for p in PAGES if p != README], ids=rel)
def test_each_docs_page_has_one_h1(page):
    h1 = re.findall(r"(?m)^# ", prose(page.read_text(encoding="utf-8")))
    assert len(h1) == 1, f"{rel(page)} has {len(h1)} H1 headings"


def test_the_readme_is_short_and_answers_on_its_first_screen():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to a page in docs/"
    first_screen = "\n".join(lines[:25])
    for needed in ("make repro", "make test", "interval", "Fashion-MNIST-LT"):
        assert needed in first_screen, f"the README's first screen lacks {needed!r}"
    first_part = "\n".join(lines[:120])
    assert "data.source" in first_part and "minutes" in first_part


# --- the params reference ------------------------------------------------------------------------


def params_reference():
    spec = importlib.util.spec_from_file_location("params_reference", REPO_ROOT / "tools" / "params_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass needs to find its module
    spec.loader.exec_module(module)
    return module


def reference_keys() -> list[str]:
    return re.findall(r"(?m)^\| `([\w.]+)` \|", (REPO_ROOT / "docs" / "params.md").read_text(encoding="utf-8"))


def test_the_params_reference_names_every_key_of_params_yaml():
    keys = params_reference().flatten(yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8")))
    missing = sorted(set(keys) - set(reference_keys()))
    assert not missing, f"docs/params.md lacks {missing}: run `make params-reference`"


def config_keys(cls=None, prefix: str = "") -> set[str]:
    """Every dotted leaf key the typed params in pipeline/config.py accept."""
    import dataclasses
    import typing

    from pipeline.config import Params

    cls = cls or Params
    keys, hints = set(), typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            keys |= config_keys(hints[field.name], f"{prefix}{field.name}.")
        else:
            keys.add(f"{prefix}{field.name}")
    return keys


def test_the_params_reference_names_no_key_that_does_not_exist():
    keys = reference_keys()
    assert len(keys) == len(set(keys)), "docs/params.md lists a key twice"
    unknown = sorted(set(keys) - config_keys())
    assert not unknown, f"docs/params.md names keys that pipeline/config.py does not have: {unknown}"


def test_the_params_reference_is_what_the_generator_writes():
    written = (REPO_ROOT / "docs" / "params.md").read_text(encoding="utf-8")
    assert written == params_reference().reference(), "docs/params.md is out of date: run `make params-reference`"


# --- troubleshooting -----------------------------------------------------------------------------


def literal_parts(node: ast.AST) -> list[str]:
    """The constant pieces of a message: a string, an f-string's text between its fields, a sum of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        parts, current = [], ""
        for value in node.values:
            if isinstance(value, ast.Constant):
                current += value.value
            else:
                parts.append(current)
                current = ""
        return [*parts, current]
    if isinstance(node, ast.BinOp):
        return literal_parts(node.left) + literal_parts(node.right)
    return []


def normalised(text: str) -> str:
    return " ".join(text.replace("`", "").replace("\\|", "|").split())


def user_errors() -> list[tuple[str, list[str]]]:
    """(file:line, the message's literal pieces of 12 characters or more) of every user error raised."""
    found = []
    for path in sorted((REPO_ROOT / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = getattr(node, "func", None)
            name = getattr(name, "id", getattr(name, "attr", None))
            if isinstance(node, ast.Call) and name in ERRORS and node.args:
                pieces = [normalised(p).lstrip(";:,./ ") for p in literal_parts(node.args[0])]
                found.append((f"{rel(path)}:{node.lineno}", [p for p in pieces if len(p) >= 12]))
    return found


def troubleshooting_table() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"(?ms)^## Troubleshooting\n(.*?)(?=^## )", text)
    assert match, "README.md has no ## Troubleshooting section"
    return normalised(match.group(1))


def test_every_error_a_user_can_meet_has_a_troubleshooting_row():
    table = troubleshooting_table()
    errors = user_errors()
    assert len(errors) > 30  # the scan finds the errors at all
    missing = [f"{where}: {pieces}" for where, pieces in errors if pieces and not any(p in table for p in pieces)]
    advice = "add a row (message | cause | fix) to the README's troubleshooting table for:\n"
    assert not missing, advice + "\n".join(missing)


# --- what evaluate writes ------------------------------------------------------------------------


def evaluate_section() -> str:
    text = (REPO_ROOT / "docs/stages.md").read_text(encoding="utf-8")
    match = re.search(r"(?ms)^## Evaluate\n(.*?)(?=^## )", text)
    assert match, "docs/stages.md has no ## Evaluate section"
    return match.group(1)


@pytest.mark.parametrize("name", ["metrics.json", "detail.json"])
def test_stages_md_names_every_key_evaluate_writes(name):
    """Each key of the committed reports/metrics.json (the headline) and reports/detail.json, and each count
    under `classes`, is named in docs/stages.md's evaluate section."""
    section = evaluate_section()
    assert f"`reports/{name}`" in section
    document = json.loads((REPO_ROOT / "reports" / name).read_text(encoding="utf-8"))
    unnamed = [key for key in document if not re.search(rf"`{re.escape(key)}[`.]", section)]
    unnamed += [f"classes.{key}" for key in document.get("classes", {}) if not re.search(rf"\b{key}\b", section)]
    assert not unnamed, f"docs/stages.md's evaluate section does not name {unnamed}"
