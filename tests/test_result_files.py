"""Every result file goes through the one atomic writer (`stores.files.replace_atomic`): a kill or a
full disk mid-write leaves the old file or none, never a half file a rerun would take as finished."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from stores.files import replace_atomic, write_json_atomic, write_npy_atomic, write_yaml_atomic

ROOT = Path(__file__).resolve().parents[1]
OWNED = {"json": {"dump"}, "yaml": {"dump", "safe_dump"}, "np": {"save", "savetxt", "savez"}}  # module.function
METHODS = {"write_text", "write_bytes", "to_csv"}  # Path / DataFrame methods


def _raw_writes(path: Path, root: Path = ROOT) -> list[str]:
    """Calls that write a file by themselves (Path.write_text/bytes, json/yaml dump, np.save(txt),
    DataFrame.to_csv, open(..., "w"/"wb"/"x")), except inside the arguments of `replace_atomic`,
    which writes only its temporary file."""
    tree = ast.parse(path.read_text())
    inside = {id(n) for call in ast.walk(tree) if isinstance(call, ast.Call)
              and getattr(call.func, "id", getattr(call.func, "attr", "")) == "replace_atomic"
              for arg in call.args[1:] for n in ast.walk(arg)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or id(node) in inside:
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
        mode = next((a.value for a in node.args[1:2] if isinstance(a, ast.Constant)), None)
        mode = next((k.value.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)),
                    mode)
        if name == "open" and isinstance(mode, str) and set(mode) & set("wx"):
            found.append(f"{path.relative_to(root)}:{node.lineno} open(..., {mode!r})")
        elif name in METHODS or name in OWNED.get(owner, ()):
            found.append(f"{path.relative_to(root)}:{node.lineno} {name}()")
    return found


def test_no_result_file_is_written_outside_the_one_writer():
    allowed = {"stores/files.py",  # the writer itself
               "fusion_search/training/run_checkpoint.py"}  # checkpoints: torch.save through their own atomic rename
    raw = [hit for pkg in ("pipeline", "fusion_search", "stores") for p in sorted((ROOT / pkg).rglob("*.py"))
           if str(p.relative_to(ROOT)) not in allowed for hit in _raw_writes(p)]
    assert raw == [], "write these through stores.files: " + "; ".join(raw)


def test_the_scan_sees_a_raw_write(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text("import json\nfrom pathlib import Path\nPath('x').write_text(json.dumps({}))\n"
                   "open('y', 'w')\nnp.save('z', a)\nreplace_atomic(p, lambda t: t.write_bytes(b''))\n")
    assert [h.split(" ", 1)[1] for h in _raw_writes(bad, tmp_path)] == ["write_text()", "open(..., 'w')", "save()"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics_test.json"
    write_json_atomic(path, {"accuracy": 0.5})

    def dies(tmp: Path) -> None:
        tmp.write_text('{"accur')  # half a file, then the kill
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_atomic(path, dies)
    assert json.loads(path.read_text()) == {"accuracy": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics_test.json"]


def test_json_yaml_and_npy_round_trip(tmp_path):
    import yaml

    write_yaml_atomic(tmp_path / "c.yaml", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "c.yaml").read_text().startswith("b: 1")  # keys in the given order
    assert yaml.safe_load((tmp_path / "c.yaml").read_text()) == {"b": 1, "a": [1, 2]}
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    write_npy_atomic(tmp_path / "logits_test.npy", arr)
    assert np.array_equal(np.load(tmp_path / "logits_test.npy"), arr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "logits_test.npy"]


def test_an_unstarted_run_is_replaced_and_a_users_folder_is_refused(tmp_path):
    """What a killed run left before its first epoch is replaced by a new run of its kind; a folder holding
    anything else (or a checkpoint to resume) is refused, and nothing in it is deleted."""
    from fusion_search.errors import SearchError
    from fusion_search.training.run import Run
    from fusion_search.training.rundir import LAST

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("kind: train\n")
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    with Run.create(run, "train", {"epochs": 2}):
        pass
    assert not (run / "metrics.jsonl").exists() and "epochs: 2" in (run / "config.yaml").read_text()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("kind: train\n")
    (mine / "notes.txt").write_text("my notes")
    with pytest.raises(SearchError, match="notes.txt"):
        with Run.create(mine, "train", {}):
            pass
    assert (mine / "notes.txt").read_text() == "my notes"
    (tmp_path / "started" / "checkpoints").mkdir(parents=True)
    (tmp_path / "started" / "config.yaml").write_text("kind: train\n")
    (tmp_path / "started" / LAST).write_bytes(b"x")
    with pytest.raises(SearchError, match="--resume"):
        with Run.create(tmp_path / "started", "train", {}):
            pass
    assert (tmp_path / "started" / LAST).is_file()


def test_a_temporary_file_a_kill_left_does_not_block_the_restart(tmp_path):
    from stores.files import write_text_atomic
    from fusion_search.training.run import Run

    run = tmp_path / "run"
    run.mkdir()
    write_text_atomic(run / "config.yaml", "kind: train\n")
    (run / "genotype.json.0123456789ab.partial").write_text('{"form')  # killed mid-write
    with Run.create(run, "train", {}):
        pass
    assert not (run / "genotype.json.0123456789ab.partial").exists()
