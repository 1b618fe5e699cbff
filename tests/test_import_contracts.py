"""Imports run one way (stores < extract | fusion_search < pipeline; the training core below the
search; no cycles inside a package): the contracts in setup.cfg, checked by the real `lint-imports`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(cwd: Path, config: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed `lint-imports` (beside this Python) on the project's packages in `cwd`."""
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.is_file():
        pytest.fail("lint-imports is not installed: `pip install -e '.[test]'` (import-linter is in the test extra)")
    args = [str(exe), "--no-cache"] + (["--config", str(config)] if config else [])
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _break(tmp_path: Path, module: str, code: str) -> subprocess.CompletedProcess:
    """lint-imports with the project's contracts on a copy of the packages where `module` gets `code`."""
    for pkg in ("stores", "extract", "fusion_search", "pipeline"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    with (tmp_path / module).open("a") as fh:
        fh.write(code)
    return _lint_imports(tmp_path, config=ROOT / "setup.cfg")


def test_the_project_keeps_its_import_contracts():
    r = _lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 kept, 0 broken" in r.stdout, r.stdout


def test_a_backward_import_breaks_the_layers(tmp_path):
    """The contracts do catch a violation: stores importing pipeline."""
    r = _break(tmp_path, "stores/device.py", "\nfrom pipeline import runs  # noqa: E402,F401  (the violation)\n")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "BROKEN" in r.stdout and "stores.device -> pipeline.runs" in r.stdout, r.stdout


def test_a_cycle_inside_a_package_breaks_the_contract(tmp_path):
    r = _break(tmp_path, "stores/schema.py",
               "\n\ndef _late():\n    from stores import verify  # noqa: F401  (a function-local import still counts)\n")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "No cycles are allowed in stores" in r.stdout, r.stdout


def test_the_training_core_may_not_reach_into_the_search(tmp_path):
    r = _break(tmp_path, "fusion_search/training/metrics.py",
               "\nfrom fusion_search import genotype  # noqa: E402,F401  (the violation)\n")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "fusion_search.training.metrics -> fusion_search.genotype" in r.stdout, r.stdout
