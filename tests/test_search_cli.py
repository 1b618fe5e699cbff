"""`bmnas search` and `bmnas genotype show|render` through the real click CLI: success and bad input (exit 2, one line)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from _search_data import planted_store, single_thread  # noqa: F401
from pipeline.cli import cli

SMALL = ["--cells", "1", "--steps", "1", "--channels", "8", "--length", "4", "--multiplier", "1",
         "--epochs", "1", "--batch-size", "32", "--device", "cpu"]

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "s.zarr"
    planted_store(path, "joint", n=160)
    return str(path)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "fast.yaml"
    path.write_text("score-min-steps: 10\nplots: false\nstep_inputs: pair\n")
    return str(path)


def run(*args):
    return CliRunner().invoke(cli, list(args))


def one_line_error(result, text):
    assert result.exit_code == 2, result.output
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.output


def test_search_writes_run_and_names_genotype_then_resume_finishes(store, config, tmp_path):
    out = tmp_path / "run"
    r = run("search", "--store", store, "--out", str(out), "--config", config, "--seed", "2", *SMALL)
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1].endswith(f"{out}/genotype.json")
    settings = (out / "config.yaml").read_text()
    assert "step_inputs: pair" in settings and "seed: 2" in settings and "score_min_steps: 10" in settings
    g = json.loads((out / "genotype.json").read_text())
    assert g["format"] == "bmnas-genotype" and len(g["cells"]) == 1

    r = run("search", "--resume", str(out))
    assert r.exit_code == 0 and r.output.strip().endswith(f"{out}/genotype.json")
    assert json.loads((out / "genotype.json").read_text()) == g
    one_line_error(run("search", "--resume", str(out), "--cells", "3"), "drop --cells")

    r = run("genotype", "show", str(out / "genotype.json"), "--store", store)
    assert r.exit_code == 0 and "cell_1  (x = " in r.output and "fits store" in r.output
    r = run("genotype", "render", str(out / "genotype.json"), "-o", str(tmp_path / "g.dot"))
    assert r.exit_code == 0 and (tmp_path / "g.dot").read_text().startswith("digraph genotype")


def test_bad_search_input_is_one_line_exit_2(store, tmp_path):
    from stores import write_store_from_arrays

    write_store_from_arrays(tmp_path / "noval.zarr", features={"a_1": np.zeros((8, 2, 2)), "b_1": np.zeros((8, 2, 2))},
                            labels=np.arange(8) % 2, splits={"train": np.arange(6), "test": np.arange(6, 8)},
                            task="multiclass", num_classes=2)
    one_line_error(run("search", "--store", str(tmp_path / "noval.zarr"), "--out", str(tmp_path / "a"), *SMALL),
                   "no rows in split 'val'")
    one_line_error(run("search", "--store", store, "--out", str(tmp_path / "b"), "--nodes", "a_1,video_9", *SMALL),
                   "unknown node(s) video_9")
    one_line_error(run("search", "--store", store, "--out", str(tmp_path / "c"), *SMALL, "--channels", "0"),
                   "--channels 0 is out of range")
    one_line_error(run("search", "--store", store, "--out", str(tmp_path / "d"), *SMALL, "--length", "5000"),
                   "--length 5000 is out of range")
    one_line_error(run("search", "--store", str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "e"), *SMALL),
                   "missing.zarr")
    one_line_error(run("search", "--store", store, "--out", str(tmp_path / "g"), *SMALL, "--candidates", "0"),
                   "--candidates 0 is out of range")
    one_line_error(run("search", "--store", store, "--out", str(tmp_path / "h"), *SMALL, "--epochs", "2",
                       "--arch-warmup-epochs", "2"), "--arch-warmup-epochs 2 is out of range")
    (tmp_path / "bad.yaml").write_text("cells: 2\nlearning_rate: 1\n")
    one_line_error(run("search", "--store", store, "--out", str(tmp_path / "f"), "--config", str(tmp_path / "bad.yaml")),
                   "unknown setting(s) learning_rate")
    one_line_error(run("search", "--resume", str(tmp_path / "nothing")), "no config.yaml")


def test_bad_genotype_files_are_one_line_exit_2(store, tmp_path):
    from test_genotype import GOOD

    path = tmp_path / "g.json"
    path.write_text(json.dumps({**GOOD, "version": 3}))
    one_line_error(run("genotype", "show", str(path)), "version 3 is not supported")
    path.write_text(json.dumps({**GOOD, "format": "something-else"}))
    one_line_error(run("genotype", "render", str(path), "-o", str(tmp_path / "g.png")), "format is 'something-else'")
    path.write_text(json.dumps(GOOD))
    one_line_error(run("genotype", "show", str(path), "--store", store), "that the store lacks")
    r = run("genotype", "show", str(path))
    assert r.exit_code == 0 and "step_2 = Attention(step_1, y)" in r.output


def test_cross_modal_on_nodes_of_one_modality_is_one_line(store, tmp_path):
    r = run("search", "--store", store, "--out", str(tmp_path / "x"), "--nodes", "a_1,a_2", "--cross-modal", *SMALL)
    one_line_error(r, "--cross-modal")
    assert not (tmp_path / "x").exists()
