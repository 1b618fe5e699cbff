"""`bmnas ablate` over 2 seeds on a small real store: both tables, all rows, dask tasks, resume."""

from __future__ import annotations

import json

from click.testing import CliRunner

from pipeline.ablate import TABLE6, TABLE7, run_ablation
from pipeline.cli import cli
from _train_data import searched_genotype, small_store


def test_ablate_two_seeds_on_dask(tmp_path):
    small_store(tmp_path / "s.zarr", n=96, C=4)
    searched_genotype(C=4, L=2).save(tmp_path / "g.json")
    path = run_ablation(str(tmp_path / "s.zarr"), tmp_path / "g.json", tmp_path / "abl", seeds=2, epochs=1,
                        batch_size=24, device="cpu", workers=2)
    text = path.read_text()
    for row in TABLE6 + TABLE7:
        assert f"| {row.label} |" in text
    assert "Table 6" in text and "Table 7" in text and " ± " in text
    assert "| no a (%) | no b (%) |" in text  # a column per missing modality
    data = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert data["metric"] == "accuracy" and data["split"] == "test" and data["seeds"] == [0, 1]
    rows = data["rows"]
    assert set(rows) == {"random", "late", "searched", "sum", "concatfc", "mha", "aoa"}
    for r in rows.values():
        assert len(r["values"]) == 2 and all(0.0 <= v <= 1.0 for v in r["values"])
    # the numbers in the table are the runs' own metrics files
    m = json.loads((tmp_path / "abl" / "runs" / "sum" / "seed_1" / "metrics_test.json").read_text())
    assert rows["sum"]["values"][1] == m["accuracy"] and rows["sum"]["params"][1] == m["num_parameters"]
    missing = json.loads((tmp_path / "abl" / "runs" / "sum" / "seed_1" / "robustness_test.json").read_text())["missing"]
    assert rows["sum"]["missing"]["a"][1] == missing["a"]["accuracy"]
    # random: one genotype per seed; the others one genotype for all seeds
    assert len(set(rows["random"]["genotypes"])) == 2 and len(set(rows["late"]["genotypes"])) == 1
    assert set(rows["searched"]["genotypes"]) == {str((tmp_path / "g.json").resolve())}  # the user's own file
    assert (tmp_path / "abl" / "ablation.png").stat().st_size > 1000
    # rerun: finished runs are reused, not retrained
    ckpt = tmp_path / "abl" / "runs" / "aoa" / "seed_0" / "checkpoints" / "best.pt"
    before = ckpt.stat().st_mtime_ns
    args = ["ablate", "--store", str(tmp_path / "s.zarr"), "--genotype", str(tmp_path / "g.json"),
            "--out", str(tmp_path / "abl"), "--seeds", "2", "--epochs", "1", "--workers", "1", "--batch-size", "24"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert ckpt.stat().st_mtime_ns == before and "| Searched |" in res.output
    # a rerun asking for other settings is refused, not answered with the old runs' figures
    res = CliRunner().invoke(cli, args[:-1] + ["96"])
    assert res.exit_code == 2 and "was trained with other batch_size" in res.output
    assert ckpt.stat().st_mtime_ns == before


def test_ablate_refuses_a_foreign_out_and_a_run_another_process_holds(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    small_store(tmp_path / "s.zarr", n=96, C=4)
    searched_genotype(C=4, L=2).save(tmp_path / "g.json")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    args = ["ablate", "--store", str(tmp_path / "s.zarr"), "--genotype", str(tmp_path / "g.json"), "--seeds", "1",
            "--epochs", "1", "--workers", "1", "--batch-size", "24", "--device", "cpu"]
    res = CliRunner().invoke(cli, args + ["--out", str(mine)])
    assert res.exit_code == 2 and "holds notes.txt, which no ablation writes" in res.output, res.output
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    abl = tmp_path / "abl"
    assert CliRunner().invoke(cli, args + ["--out", str(abl)]).exit_code == 0
    held = abl / "runs" / "late" / "seed_0"
    (held / "metrics_test.json").unlink()  # so the rerun must evaluate this run again
    hold = ("import sys, time\nfrom fusion_search.training.run import Run\n"
            f"with Run.open({str(held)!r}, ('train',)):\n    print('held', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True,
                            cwd=str(Path(__file__).parent.parent))
    try:
        assert proc.stdout.readline().strip() == "held"
        res = CliRunner().invoke(cli, args + ["--out", str(abl)])
        assert res.exit_code == 2 and f"is in use by pid {proc.pid}" in res.output, res.output
        assert not (held / "metrics_test.json").exists()
    finally:
        proc.kill()
        proc.wait()
