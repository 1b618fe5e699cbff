"""No bmnas command deletes or writes into what bmnas did not make: `extract --overwrite` replaces a
bmnas store and nothing else; an --out that is a user's folder or file is refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from extract.synth import generate
from pipeline.cli import cli
from stores import is_bmnas_store, open_store, write_store_from_arrays
from stores.errors import StoreError


@pytest.fixture(scope="module")
def ntu(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ntu") / "data"
    generate("ntu-like", root, samples=8, classes=4, seed=3)
    return root


def _extract(root: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["extract", str(root), "--out", str(out), "--backbone", "skeleton=hcn",
                                    "--setting", "tiny", "--rows-per-chunk", "4", "--no-dask", "--quiet", *extra])


def _user_folder(path: Path) -> dict[str, bytes]:
    path.mkdir()
    (path / "thesis.tex").write_bytes(b"\\section{results}")
    (path / "runs").mkdir()
    (path / "runs" / "seed0.csv").write_bytes(b"acc\n0.91\n")
    return _snapshot(path)


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("overwrite", [False, True])
def test_extract_into_a_users_folder_is_refused_and_deletes_nothing(ntu, tmp_path, overwrite):
    out = tmp_path / "mine"
    before = _user_folder(out)
    r = _extract(ntu, out, *(["--overwrite"] if overwrite else []))
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "not a bmnas feature store" in lines[0] and str(out) in lines[0], r.output
    assert "pass --overwrite" not in r.output  # never suggest the flag that would delete the user's files
    assert _snapshot(out) == before


def test_extract_onto_a_users_file_is_refused_with_overwrite(ntu, tmp_path):
    out = tmp_path / "notes.zarr"
    out.write_bytes(b"keep me")
    r = _extract(ntu, out, "--overwrite")
    assert r.exit_code == 2 and "is a file that is not a bmnas feature store" in r.output, r.output
    assert out.read_bytes() == b"keep me"


def test_overwrite_replaces_a_bmnas_store(ntu, tmp_path):
    out = tmp_path / "s.zarr"
    assert _extract(ntu, out, "--taps", "skeleton=fc7").exit_code == 0
    assert is_bmnas_store(out) and open_store(out).nodes == ["skeleton_1"]
    r = _extract(ntu, out, "--taps", "skeleton=conv5,fc7")
    assert r.exit_code == 2 and "pass --overwrite" in r.output, r.output
    r = _extract(ntu, out, "--taps", "skeleton=conv5,fc7", "--overwrite")
    assert r.exit_code == 0, r.output
    assert open_store(out).nodes == ["skeleton_1", "skeleton_2"]


def test_the_format_marker_is_there_from_the_first_file(tmp_path):
    """A store killed while being created is still recognised as bmnas's (so --overwrite may replace it)."""
    import numpy as np

    from stores import NodeSpec, create_store

    create_store(tmp_path / "s.zarr", task="multiclass", num_classes=2, nodes=[NodeSpec("a_1", 3, 1)],
                 num_samples=4)
    assert is_bmnas_store(tmp_path / "s.zarr")
    assert not is_bmnas_store(tmp_path) and not is_bmnas_store(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    assert not is_bmnas_store(tmp_path / "plain")
    with pytest.raises(StoreError, match="not a bmnas feature store, so overwrite will not delete it"):
        write_store_from_arrays(tmp_path / "plain", {"a_1": np.zeros((4, 3, 1))}, np.zeros(4, dtype=np.int64),
                                {"train": [0, 1], "val": [2], "test": [3]}, task="multiclass", num_classes=2,
                                overwrite=True)
    assert (tmp_path / "plain" / "zarr.json").is_file()


EARLY_REFUSAL = """
import sys
from extract.errors import ExtractError
from extract.job import BackboneChoice, extract
from extract.sources.registry import open_source
try:
    extract(open_source({raw!r}), {out!r}, [BackboneChoice("skeleton", "hcn", "tiny", taps=("fc7",))],
            rows_per_chunk=4, progress=False, workers=1)
except ExtractError as exc:
    print("refused:", exc)
print("cluster started:", "distributed" in sys.modules)
"""


def test_a_store_of_other_settings_is_refused_before_a_cluster_starts(ntu, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "s.zarr"
    assert _extract(ntu, out, "--taps", "skeleton=conv5,fc7").exit_code == 0
    r = subprocess.run([sys.executable, "-c", EARLY_REFUSAL.format(raw=str(ntu), out=str(out))],
                       capture_output=True, text=True, timeout=300)
    assert "refused:" in r.stdout and "backbones differ" in r.stdout, r.stdout + r.stderr
    assert "cluster started: False" in r.stdout


def test_out_naming_a_file_is_one_line_in_every_stage(ntu, tmp_path):
    from _search_data import planted_store

    store = tmp_path / "p.zarr"
    planted_store(store, "joint", n=160)
    mine = tmp_path / "mine.txt"
    mine.write_text("keep")
    runs = [["search", "--store", str(store), "--epochs", "1"],
            ["search", "--store", str(store), "--epochs", "1", "--seeds", "0-1", "--workers", "1"],
            ["pretrain", str(ntu), "--modality", "skeleton", "--backbone", "hcn", "--setting", "tiny",
             "--epochs", "1", "--device", "cpu"]]
    for argv in runs:
        r = CliRunner().invoke(cli, argv + ["--out", str(mine)])
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, (argv, r.output)
        assert "is a file, not a" in r.output and "Traceback" not in r.output, r.output
    assert mine.read_text() == "keep" and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_torch_module_without_taps_is_told_both_forms_of_taps(tmp_path, monkeypatch):
    (tmp_path / "netmod.py").write_text("import torch.nn as nn\n\ndef build():\n    return nn.Sequential(nn.Linear(3, 4))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r = CliRunner().invoke(cli, ["backbones", "show", "netmod:build", "--modality", "array_x"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "--taps LAYER,LAYER in pretrain and backbones show" in r.output
    assert "--taps array_x=LAYER,LAYER in extract and finetune" in r.output
