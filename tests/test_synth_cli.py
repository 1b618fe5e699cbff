"""`bmnas data synth` and `bmnas data info` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from pipeline.cli import cli


def test_synth_then_info_then_check_lists_every_problem(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "ntu"
    res = runner.invoke(cli, ["data", "synth", "ntu-like", str(out), "--samples", "12", "--classes", "4", "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert "wrote 12 ntu-like samples, 4 classes" in res.output and "video_only" in res.output

    res = runner.invoke(cli, ["data", "info", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["source"] == "ntu" and summary["samples"] == 12 and summary["num_classes"] == 4
    assert summary["modalities"] == ["video", "skeleton"] and summary["problems"] == []
    assert summary["synthetic"]["ceilings"]["both"] == 1.0

    videos = sorted((out / "nturgb+d_rgb").iterdir())
    skeletons = sorted((out / "nturgb+d_skeletons").iterdir())
    videos[0].write_bytes(b"\x00" * 100)  # corrupt video
    lines = skeletons[1].read_text().splitlines()
    lines[5] = "1 2 3"  # malformed joint line
    skeletons[1].write_text("\n".join(lines) + "\n")
    skeletons[2].unlink()  # missing skeleton
    res = runner.invoke(cli, ["data", "info", str(out), "--check"])
    assert res.exit_code == 1, res.output  # problems listed: exit 1, as `store verify`
    assert "samples: 12" in res.output and "problems: 3" in res.output  # unreadable samples stay listed
    assert videos[0].name in res.output and f"{skeletons[1].name}:6:" in res.output
    assert f"{skeletons[2].stem}: unreadable, no skeleton file" in res.output


def test_info_mmimdb_like_and_manifest_problems(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["data", "synth", "mmimdb-like", str(tmp_path / "mm"), "-n", "10"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["data", "info", str(tmp_path / "mm" / "multimodal_imdb.hdf5")])
    assert "mmimdb, multilabel, 23 classes, modalities image, text" in res.output
    res = runner.invoke(cli, ["data", "info", str(tmp_path / "mm")])  # the raw posters and plots
    assert "manifest, multilabel, 23 classes, modalities image, text" in res.output
    assert "synthetic mmimdb-like: ceilings image_only" in res.output
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,split,label,image\na,train,0,a.png\nb,val,1,b.png\n")
    res = runner.invoke(cli, ["data", "info", str(manifest)])
    assert res.exit_code == 1 and "problems: 2" in res.output and "m.csv:2:" in res.output and "m.csv:3:" in res.output


def test_user_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["data", "info", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "missing: no such file or directory" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(cli, ["data", "synth", "ntu-like", str(tmp_path / "x"), "--classes", "7"])
    assert res.exit_code == 2 and "--classes 7" in res.output
    (tmp_path / "m.csv").write_text("id,split,label,image,audio\n")
    res = runner.invoke(cli, ["data", "info", str(tmp_path / "m.csv")])
    assert res.exit_code == 2 and "unknown column(s) audio" in res.output
