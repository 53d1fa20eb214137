"""The documentation: README.md stays short and its example runs; the MkDocs site builds in strict
mode and its configuration reference, generated from the config dataclasses, lists every key."""
from __future__ import annotations

import dataclasses
import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ptncn_dist.config import SECTIONS, valid_keys

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
HOOK = ROOT / "docs" / "hooks" / "config_reference.py"
SETUP_COMMANDS = (
    'pip install -e . && ptncn train',
    'pip install -e ".[test]" && python -m pytest -q',
)


def _hook():
    spec = importlib.util.spec_from_file_location("config_reference", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_short_and_keeps_the_setup_commands():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; at most 200 (the rest belongs in docs/)"
    for command in SETUP_COMMANDS:
        assert command in text, f"README.md lost the set-up command {command!r}"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert SETUP_COMMANDS[1] in ci, ".ci/run must run the README's test command"


def test_every_config_key_has_a_description():
    hook = _hook()
    text, missing = hook.reference()
    assert missing == [], f"config keys without a docstring under their field: {missing}"
    for key in valid_keys():
        assert f"`{key}`" in text


def test_an_undocumented_key_is_reported():
    hook = _hook()

    @dataclasses.dataclass
    class Section:
        documented: int = 1
        """What it does."""
        bare: float = 0.5

    Section.__module__ = __name__
    table, missing = hook.section_table("demo", Section)
    assert missing == ["demo.bare"]
    assert "| `demo.documented` | `int` | `1` | What it does. |" in table
    assert "**undocumented**" in table


def test_sections_are_the_documented_ones():
    hook = _hook()
    text, _ = hook.reference()
    for section in SECTIONS:
        assert f"## `[{section}]`" in text


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path):
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no Python example"
    example = blocks[0]
    assert "from ptncn_dist import" in example and len(example.strip().splitlines()) <= 6
    proc = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "->" in proc.stdout
    assert (tmp_path / "runs" / "example" / "summary.json").is_file()


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    page = html.unescape((site / "configuration" / "index.html").read_text(encoding="utf-8"))
    absent = [key for key in valid_keys() if f"<code>{key}</code>" not in page]
    assert absent == [], f"the configuration page does not list {absent}"
    assert "<!-- config-reference -->" not in page
    assert "undocumented" not in page
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("ptncn_dist.load_config", "ptncn_dist.trainer.train", "ptncn_dist.core.schedule",
                 "ptncn_dist.engines.ray_engine"):
        assert f'id="{name}"' in api, f"the API page has no entry {name}"
