"""Genotype format v2 (v1 files load): round trip, provenance, validation of bad files, store checks, show and render."""

import copy
import json

import pytest

from fusion_search.errors import SearchError
from fusion_search.genotype import Genotype, check_against_store, check_provenance, show
from fusion_search.render import render, to_dot

GOOD = {"format": "bmnas-genotype", "version": 1, "task": "multiclass", "num_classes": 60,
        "nodes": ["video_1", "video_2", "video_3", "video_4", "skeleton_1", "skeleton_2", "skeleton_3", "skeleton_4"],
        "C": 128, "L": 8, "multiplier": 2,
        "cells": [{"inputs": ["video_4", "skeleton_2"],
                   "steps": [{"op": "ConcatFC", "inputs": [0, 1]}, {"op": "Attention", "inputs": [2, 1]}],
                   "concat": [2, 3]},
                  {"inputs": ["cell_1", "skeleton_4"],
                   "steps": [{"op": "LinearGLU", "inputs": [0, 1]}, {"op": "Sum", "inputs": [2, 2]}],
                   "concat": [2, 3]}],
        "output": ["cell_1", "cell_2"]}


def test_round_trip_through_file(tmp_path):
    g = Genotype.from_dict(GOOD)  # a version 1 file
    g.save(tmp_path / "g.json")
    assert json.loads((tmp_path / "g.json").read_text()) == {**GOOD, "version": 2}
    assert Genotype.load(tmp_path / "g.json") == g
    assert g.used_nodes() == ["video_4", "skeleton_2", "skeleton_4"]


def test_provenance_round_trip_and_check(tmp_path):
    attrs = {"video_4": {"backbone": "inflated_resnet50", "layer": "pool", "checkpoint_sha256": "ab" * 32},
             "skeleton_2": {"backbone": "hcn", "layer": "conv6", "checkpoint_sha256": None}}
    g = Genotype.from_dict(GOOD).with_provenance(lambda n: attrs.get(n, {}))
    assert set(g.provenance) == {"video_4", "skeleton_2"}  # skeleton_4 has no recorded provenance
    assert g.key() == Genotype.from_dict(GOOD).key() == json.dumps({**GOOD}, sort_keys=True, separators=(",", ":"))
    g.save(tmp_path / "g.json")
    back = Genotype.load(tmp_path / "g.json")
    assert back.provenance == g.provenance and back == Genotype.from_dict(GOOD)
    check_provenance(back, lambda n: attrs.get(n, {}))
    moved = {**attrs, "video_4": {**attrs["video_4"], "layer": "layer2"}}
    with pytest.raises(SearchError, match="node video_4 was pool of inflated_resnet50.*layer2 of inflated_resnet50"):
        check_provenance(back, lambda n: moved.get(n, {}), "g.json")
    check_provenance(back, lambda n: moved.get(n, {}), accept_changed=True)
    with pytest.raises(SearchError, match="provenance is a field of version 2"):
        Genotype.from_dict({**GOOD, "provenance": {}})
    with pytest.raises(SearchError, match="provenance must map node names"):
        Genotype.from_dict({**GOOD, "version": 2, "provenance": {"nope": {}}})


def _mutated(path, value):
    d = copy.deepcopy(GOOD)
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return d


@pytest.mark.parametrize("path,value,message", [
    (("format",), "bmnas-features", "format is 'bmnas-features'"),
    (("version",), 3, "version 3 is not supported"),
    (("task",), "regression", "task 'regression'"),
    (("C",), 0, "C must be an integer in 1..4096"),
    (("C",), 10 ** 9, "C must be an integer in 1..4096"),
    (("cells", 0, "inputs"), ["video_9", "skeleton_2"], "names 'video_9'"),
    (("cells", 0, "inputs"), ["cell_1", "skeleton_2"], "names 'cell_1'"),    # a Cell cannot read itself
    (("cells", 0, "steps", 0, "op"), "Conv", "op 'Conv' is not a primitive"),
    (("cells", 0, "steps", 0, "inputs"), [0, 2], "inner-node indices in 0..1"),
    (("cells", 0, "concat"), [4], "concat must list distinct"),
    (("output",), ["cell_3"], "output must list distinct cells"),
])
def test_invalid_genotypes_name_the_field(path, value, message):
    with pytest.raises(SearchError, match=message):
        Genotype.from_dict(_mutated(path, value), "g.json")


def test_unknown_and_missing_fields(tmp_path):
    with pytest.raises(SearchError, match="unknown field"):
        Genotype.from_dict({**GOOD, "extra": 1})
    with pytest.raises(SearchError, match="missing field"):
        Genotype.from_dict({k: v for k, v in GOOD.items() if k != "output"})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SearchError, match="bad.json: not a JSON genotype"):
        Genotype.load(tmp_path / "bad.json")
    with pytest.raises(SearchError, match="not found"):
        Genotype.load(tmp_path / "missing.json")


def test_check_against_store_names_missing_nodes_and_task():
    g = Genotype.from_dict(GOOD)
    check_against_store(g, GOOD["nodes"], "multiclass", 60)
    with pytest.raises(SearchError, match="skeleton_4 that the store lacks"):
        check_against_store(g, GOOD["nodes"][:-1], "multiclass", 60)
    with pytest.raises(SearchError, match="multilabel with 23 classes"):
        check_against_store(g, GOOD["nodes"], "multilabel", 23)


def test_show_is_a_readable_tree():
    text = show(Genotype.from_dict(GOOD))
    assert "cell_1  (x = video_4, y = skeleton_2)" in text
    assert "step_2 = Attention(step_1, y)" in text
    assert "cell_2  (x = cell_1, y = skeleton_4)" in text
    assert "step_2 = Sum(step_1, step_1)" in text
    assert "head: linear(concat[cell_1, cell_2]) -> 60 multiclass logits" in text


def test_render_dot_source_png_and_svg(tmp_path):
    g = Genotype.from_dict(GOOD)
    assert render(g, tmp_path / "g.dot") == "source"
    dot = (tmp_path / "g.dot").read_text()
    assert dot == to_dot(g)
    for edge in ['"in:video_4" -> "cell_1:x"', '"cell_1:out" -> "cell_2:x"', '"cell_1:step_1" -> "cell_1:step_2"',
                 '"cell_2:out" -> "head"']:
        assert edge in dot
    assert "video_1" not in dot  # unused inputs are not drawn
    assert render(g, tmp_path / "g.png", engine="matplotlib") == "matplotlib"
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    render(g, tmp_path / "g.svg", engine="matplotlib")
    assert "<svg" in (tmp_path / "g.svg").read_text()
    with pytest.raises(SearchError, match="unsupported extension"):
        render(g, tmp_path / "g.jpg")
