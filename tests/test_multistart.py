"""Multi-start search (`bmnas search --seeds`): seed-list parsing, selection, resume, CLI errors.

Real searches on a planted store, on a real dask LocalCluster where the test says so.
"""

import json
import shutil

import pytest
from click.testing import CliRunner

from _search_data import planted_store, single_thread  # noqa: F401
from fusion_search.config import SearchConfig
from fusion_search.errors import SearchError
from fusion_search.search import run_search
from pipeline.cli import cli
from pipeline.multistart import parse_seeds, run_multistart

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("ms") / "joint.zarr"
    planted_store(path, "joint", n=240)
    return str(path)


def small(store: str, **kw) -> SearchConfig:
    base = dict(store=store, cells=1, steps=1, channels=8, length=4, multiplier=1, epochs=4, batch_size=16,
                arch_lr=3e-3, score_min_steps=20, score_seeds=2, step_inputs="pair", device="cpu", plots=False)
    return SearchConfig(**{**base, **kw})


@pytest.mark.parametrize("text,seeds", [("0-4", [0, 1, 2, 3, 4]), ("0,2,5", [0, 2, 5]), ("0-2,7", [0, 1, 2, 7]),
                                        (" 3 , 1 ", [3, 1])])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text,why", [("4-2", "backwards"), ("a", "integers"), ("1,1", "twice"), ("3", "2 to 256"),
                                      ("-1,2", "integers"), ("", "integers"), ("0-999", "2 to 256")])
def test_parse_seeds_errors(text, why):
    with pytest.raises(SearchError, match=why):
        parse_seeds(text)


def test_keeps_the_best_rescored_genotype_and_writes_every_seed(store, tmp_path):
    res = run_multistart(small(store), tmp_path / "ms", [0, 1, 2], workers=1, echo=lambda s: None,
                         fixed_fusions=False)
    data = json.loads((tmp_path / "ms" / "seeds.json").read_text())
    assert [s["seed"] for s in data["seeds"]] == [0, 1, 2]
    for s in data["seeds"]:
        assert len(s["scores"]) == 2 and s["score"] == pytest.approx(sum(s["scores"]) / 2)
        assert (tmp_path / "ms" / f"seed_{s['seed']}" / "genotype.json").is_file()  # ordinary search runs
    best = max(data["seeds"], key=lambda s: s["score"])
    assert data["kept_seed"] == best["seed"] == res.kept.seed
    kept = json.loads((tmp_path / "ms" / "genotype.json").read_text())
    assert kept == best["genotype"]
    assert data["score_noise_std"] >= 0
    # identical genotypes from different seeds get identical re-scores (scoring ignores the search seed)
    by_key = {}
    for s in data["seeds"]:
        by_key.setdefault(json.dumps(s["genotype"]["cells"], sort_keys=True), []).append(s["scores"])
    assert all(all(v == vs[0] for v in vs) for vs in by_key.values())


def test_resume_after_a_kill_reuses_finished_seeds_and_ends_as_an_uninterrupted_run(store, tmp_path):
    cfg = small(store)
    full = run_multistart(cfg, tmp_path / "full", [0, 1], workers=1, echo=lambda s: None)
    # the state a kill leaves: seed 0 finished and re-scored, seed 1 stopped in its third epoch
    run = tmp_path / "killed"
    shutil.copytree(tmp_path / "full", run)
    for name in ("seeds.json", "genotype.json"):
        (run / name).unlink()
    shutil.rmtree(run / "seed_1")

    def kill(epoch, batch):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(small(store, seed=1), run / "seed_1", on_batch=kill)
    finished = (run / "seed_0" / "final_score.json").stat().st_mtime_ns
    res = run_multistart(cfg, run, [0, 1], workers=1, echo=lambda s: None)
    assert (run / "seed_0" / "final_score.json").stat().st_mtime_ns == finished  # reused, not re-scored
    assert res.genotype == full.genotype
    assert [(o.seed, o.scores, o.search_score) for o in res.outcomes] == \
        [(o.seed, o.scores, o.search_score) for o in full.outcomes]
    # another setting into the same directory is refused, not mixed
    with pytest.raises(SearchError, match="other settings"):
        run_multistart(small(store, epochs=5), run, [0, 1], workers=1, echo=lambda s: None)


@pytest.mark.slow
def test_cli_runs_seeds_on_a_local_cluster_and_resumes(store, tmp_path):
    out = tmp_path / "cli"
    args = ["search", "--store", store, "--out", str(out), "--seeds", "0-1", "--workers", "2", "--cells", "1",
            "--steps", "1", "--channels", "8", "--length", "4", "--multiplier", "1", "--epochs", "3",
            "--batch-size", "16", "--score-seeds", "2", "--device", "cpu", "--step-inputs", "pair"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "| seed |" in first.output and "margin over late fusion" in first.output
    data = json.loads((out / "seeds.json").read_text())
    again = CliRunner().invoke(cli, ["search", "--resume", str(out)])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "seeds.json").read_text()) == data
    record = json.loads((out / "candidates.json").read_text())
    kept = next(c for c in record["candidates"] if c["name"] == record["kept"])
    assert json.loads((out / "genotype.json").read_text()) == kept["genotype"]


@pytest.mark.parametrize("extra,text", [
    (["--seeds", "2-1"], "--seeds '2-1'"),
    (["--seeds", "x"], "--seeds 'x'"),
    (["--seeds", "0-1", "--seed", "3"], "--seed and --seeds"),
    (["--workers", "2"], "add --seeds"),
])
def test_cli_bad_seed_lists_are_one_line(store, tmp_path, extra, text):
    r = CliRunner().invoke(cli, ["search", "--store", store, "--out", str(tmp_path / "r"), *extra])
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and text in lines[0], r.output
    assert not (tmp_path / "r").exists()


def test_zero_workers_is_refused_before_the_run_directory_exists(store, tmp_path):
    with pytest.raises(SearchError, match="--workers 0"):
        run_multistart(small(store), tmp_path / "w0", [0, 1], workers=0, echo=lambda s: None)
    assert not (tmp_path / "w0").exists()


def test_a_fixed_fusion_that_validates_best_is_kept_and_said(tmp_path):
    """The label lives in a_2 and a_3 together; one cross-modal Cell can read only one of them, while
    the found Cell on modality a alone reads both: that fixed fusion must win, and candidates.json says
    so beside the search's own pick and every candidate's val mean ± std."""
    path = tmp_path / "a_only.zarr"
    planted_store(path, "joint", n=240, planted=("a_2", "a_3"))
    lines: list[str] = []
    res = run_multistart(small(str(path), cross_modal=True, epochs=3), tmp_path / "ms", [0, 1], workers=1,
                         echo=lines.append)
    record = json.loads((tmp_path / "ms" / "candidates.json").read_text())
    names = [c["name"] for c in record["candidates"]]
    assert names == ["seed_0", "seed_1", "late", "unimodal_a", "unimodal_b"]
    by_name = {c["name"]: c for c in record["candidates"]}
    assert record["kept"] == "unimodal_a" == res.selected.name and record["kept_kind"] == "fixed"
    assert by_name["unimodal_a"]["mean"] > max(by_name[f"seed_{k}"]["mean"] for k in (0, 1)) + 0.1
    assert record["searched_pick"] == f"seed_{res.kept.seed}"
    assert record["margin_over_late"] == pytest.approx(by_name["unimodal_a"]["mean"] - by_name["late"]["mean"])
    assert all(len(c["scores"]) == 2 and c["std"] >= 0 for c in record["candidates"])
    assert json.loads((tmp_path / "ms" / "genotype.json").read_text()) == by_name["unimodal_a"]["genotype"]
    assert lines[-1].startswith("kept unimodal_a (fixed) (the search's own pick was seed_")
    assert "margin over late fusion +" in lines[-1]


def test_choose_prefers_the_searched_candidate_on_a_tie_and_late_needs_two_modalities():
    from fusion_search.genotype import Genotype
    from pipeline.selection import Candidate, choose, fixed_genotypes

    a = Candidate("seed_0", "searched", {}, (0.5, 0.7))
    b = Candidate("late", "fixed", {}, (0.6, 0.6))
    assert choose([a, b]) is a and choose([b, Candidate("x", "fixed", {}, (0.9,))]).name == "x"
    thirds = Candidate("seed_1", "searched", {}, (0.1, 0.2, 0.3))  # fmean 0.2000000000000000x
    assert choose([thirds, Candidate("late", "fixed", {}, (0.2, 0.2, 0.2))]) is thirds
    one = Genotype.from_dict({"format": "bmnas-genotype", "version": 1, "task": "multiclass", "num_classes": 2, "nodes": ["a_1", "a_2", "a_3"],
                              "C": 8, "L": 4, "multiplier": 1, "output": ["cell_1"],
                              "cells": [{"inputs": ["a_1", "a_3"], "steps": [{"op": "Sum", "inputs": [0, 1]}],
                                         "concat": [2]}]}, "test")
    assert list(fixed_genotypes(one)) == ["unimodal_a"]
