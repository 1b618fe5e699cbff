"""docs/api.md's script runs as written in an empty folder: synthetic data, extraction, search and
training through the Python entry points, leaving the run directories the commands leave."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_the_api_script_runs_as_written(tmp_path):
    m = re.search(r"<!-- example:script -->\s*```python\n(.*?)```", DOC.read_text(), re.S)
    assert m, "docs/api.md has no script block"
    (tmp_path / "script.py").write_text(m.group(1))
    res = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "120 samples" in res.stdout and "test accuracy:" in res.stdout
    from stores import open_store

    store = open_store(tmp_path / "features.zarr")
    assert {n.rsplit("_", 1)[0] for n in store.nodes} == {"video", "skeleton"}
    assert (tmp_path / "runs" / "search" / "genotype.json").is_file()
    assert list((tmp_path / "runs" / "search" / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((tmp_path / "runs" / "train" / "metrics_test.json").read_text())
    assert metrics["num_samples"] == len(store.splits["test"]) and 0.0 <= metrics["accuracy"] <= 1.0
