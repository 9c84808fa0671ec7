"""The documentation's code runs and its configs parse, so that a page cannot drift from the code.

- Every ```python block of a page under ``docs/tutorials/`` runs (mktestdocs), the blocks of
  one page in order in one namespace, as a reader pasting them in order would run them.
  Shell commands are ```bash or ```console blocks and do not run; output is ```text.
- Every ```yaml block of every page (and of the README) that is a fit config, one with
  ``stream:``, ``strategies:``, ``model:`` or another of ``contmm fit``'s sections
  (``trainer:``, ``eval:``, ...) at its top level, is parsed by ``contmm fit``'s
  own parser (``contmm.cli.fit_parser``) composed on ``experiments/seq_vqa.yaml``, as
  ``contmm fit --config experiments/seq_vqa.yaml --config BLOCK`` reads it: a key that is
  not an option, a value of the wrong type or a ``class_path`` that does not import fails.
  A block preceded by the line ``<!-- partial -->`` is a fragment shown for its shape and
  is skipped.
- A ```python block preceded by ``<!-- module: NAME -->`` is a module a reader saves as
  ``NAME.py``: it is written so, on the import path of the YAML checks, so that
  ``class_path: NAME.Class`` resolves. The first ```python block of the own-strategy
  tutorial is ``my_strategies`` in any case (``tests/test_user_strategy.py`` runs it).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from mktestdocs import check_md_file

from contmm.cli import fit_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
TUTORIALS = sorted((DOCS / "tutorials").glob("*.md"))
PAGES = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
FIT_SECTIONS = {
    "stream",
    "strategies",
    "model",
    "trainer",
    "pretrain",
    "optimizer",
    "data",
    "eval",
    "checkpoint",
}

FENCE = re.compile(
    r"^(?P<marks>(?:<!--[^\n]*-->\n)*)```(?P<info>[^\n]*)\n(?P<body>.*?)^```\s*$", re.MULTILINE | re.DOTALL
)


def blocks(page: Path) -> list[tuple[str, str, str]]:
    """(info string, body, the HTML comments right above it) of every fenced block of ``page``."""
    text = page.read_text()
    return [(m["info"].strip(), m["body"], m["marks"]) for m in FENCE.finditer(text)]


def modules(page: Path) -> dict[str, str]:
    """The modules a reader saves from ``page``: ``<!-- module: NAME -->`` python blocks."""
    found = {}
    for info, body, marks in blocks(page):
        if info == "python" and (name := re.search(r"<!-- module: (\w+) -->", marks)):
            found[name[1]] = body
    if page.name == "own-strategy.md":
        found.setdefault("my_strategies", next(b for i, b, _ in blocks(page) if i == "python"))
    return found


def fit_configs() -> list[tuple[str, str]]:
    configs = []
    for page in PAGES:
        for n, (info, body, marks) in enumerate(blocks(page)):
            if info != "yaml" or "<!-- partial -->" in marks:
                continue
            parsed = yaml.safe_load(body)
            if isinstance(parsed, dict) and FIT_SECTIONS & parsed.keys():
                configs.append((f"{page.relative_to(REPO)}#{n}", body))
    return configs


@pytest.mark.parametrize("page", TUTORIALS, ids=lambda p: p.name)
def test_a_tutorials_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a block writes lands here
    check_md_file(page, memory=True)


@pytest.fixture
def readers_modules(tmp_path, monkeypatch):
    """The modules the tutorials have readers save, importable as the YAML names them."""
    for page in TUTORIALS:
        for name, source in modules(page).items():
            (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(("where", "text"), fit_configs(), ids=[w for w, _ in fit_configs()])
def test_a_config_in_the_docs_parses_as_contmm_fit_reads_it(where, text, readers_modules):
    config = readers_modules / "block.yaml"
    config.write_text(text)
    parser = fit_parser()
    cfg = parser.parse_args(["--config", str(REPO / "experiments/seq_vqa.yaml"), "--config", str(config)])
    for section in FIT_SECTIONS & yaml.safe_load(text).keys():
        assert cfg[section] is not None, f"{where}: {section} did not parse"


def test_the_docs_hold_fit_configs_and_tutorial_code():
    """The checks above check something: a rename of the fences would silence them."""
    assert len(fit_configs()) >= 5
    with_code = {page.name for page in TUTORIALS if any(info == "python" for info, _, _ in blocks(page))}
    assert {"own-strategy.md", "own-stream.md"} <= with_code
