"""Baseline genotypes: structure, found-network shapes and hand-counted parameters, templates, errors."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from fusion_search.baselines import BASELINES, baseline_genotype, deepest_taps
from fusion_search.errors import SearchError
from fusion_search.found_network import FoundNetwork, count_parameters
from fusion_search.genotype import Genotype
from _train_data import NODES, searched_genotype

C, L, K, C_NODE, T = 8, 4, 4, 6, 4
SHAPES = {n: (C_NODE, T) for n in NODES}
# Hand counts (C=8, L=4, K=4, two Cells, two used nodes of 6 channels, T=4):
# ReshapeInput per node: level and dynamics paths, each Conv1d 6*8 (no bias) + BN 2*8 = 64 -> 256 for two nodes
# CellOutput of k inner nodes: k*C*C + 2C; head: 2*C*L*K + K = 260
# steps: Sum 0, Attention 0, LinearGLU 2*C*C = 128, ConcatFC 2*C*C + C = 136
EXPECTED = {
    "sum": 256 + 2 * (0 + 64 + 16) + 260,              # 676
    "concatfc": 256 + 2 * (136 + 64 + 16) + 260,       # 948
    "mha": 256 + 2 * (0 + 128 + 16) + 260,             # 804
    "aoa": 256 + 2 * (128 + 64 + 16) + 260,            # 932
    "late": 256 + 2 * (136 + 0 + 128 + 16) + 260,      # 1076 (reference Cell: ConcatFC, Attention)
}


def _net(g: Genotype) -> FoundNetwork:
    torch.manual_seed(0)
    return FoundNetwork(g, SHAPES)


@pytest.mark.parametrize("name", BASELINES)
def test_found_network_shapes_and_parameters(name):
    g = baseline_genotype(name, NODES, "multiclass", K, seed=3, C=C, L=L)
    net = _net(g)
    feats = {n: torch.randn(5, C_NODE, T) for n in NODES}
    assert net(feats).shape == (5, K)
    used = len(g.used_nodes())
    expected = EXPECTED.get(name, 16 * C * used + 2 * (136 + 128 + 16) + 260)  # random: reference Cell
    assert count_parameters(net) == expected
    # a baseline is an ordinary genotype: it survives the JSON round trip unchanged
    assert Genotype.from_dict(g.to_dict()).key() == g.key()


def test_cell_structures_match_the_paper_figure():
    ops = {name: [(s.op, s.inputs) for s in baseline_genotype(name, NODES, "multiclass", K).cells[0].steps]
           for name in ("sum", "concatfc", "mha", "aoa")}
    assert ops["sum"] == [("Sum", (0, 1))]
    assert ops["concatfc"] == [("ConcatFC", (0, 1))]
    assert ops["mha"] == [("Attention", (0, 1)), ("Attention", (0, 1))]  # two heads, concat projected
    assert ops["aoa"] == [("Attention", (0, 1)), ("LinearGLU", (2, 0))]  # v̂ gated by the query x
    assert baseline_genotype("mha", NODES, "multiclass", K).cells[0].concat == (2, 3)


def test_late_fusion_reads_only_the_deepest_taps():
    assert deepest_taps(NODES) == ["a_3", "b_3"]
    assert deepest_taps(["a_2", "a_10", "b_1", "odd"]) == ["a_10", "b_1", "odd"]
    g = baseline_genotype("late", NODES, "multiclass", K, cells=3)
    assert [c.inputs for c in g.cells] == [("a_3", "b_3"), ("cell_1", "a_3"), ("cell_2", "b_3")]
    assert g.used_nodes() == ["a_3", "b_3"]
    with pytest.raises(SearchError, match="two modalities"):
        baseline_genotype("late", ["video_1", "video_2"], "multiclass", K)


def test_templates_keep_one_half_of_the_searched_genotype():
    t = searched_genotype(C=C, L=L)
    for name in ("sum", "concatfc", "mha", "aoa"):  # Table 7: same feature selection
        g = baseline_genotype(name, NODES, "multiclass", K, template=t)
        assert [c.inputs for c in g.cells] == [c.inputs for c in t.cells]
        assert (g.C, g.L, g.output) == (t.C, t.L, t.output)
    for name in ("late", "random"):  # Table 6: same Cells
        g = baseline_genotype(name, NODES, "multiclass", K, template=t, seed=1)
        assert [(c.steps, c.concat) for c in g.cells] == [(c.steps, c.concat) for c in t.cells]
    late = baseline_genotype("late", NODES, "multiclass", K, template=t)
    assert late.cells[0].inputs == ("a_3", "b_3")


def test_random_is_seeded_with_distinct_pairs():
    picks = [baseline_genotype("random", NODES, "multiclass", K, seed=s, cells=3) for s in range(6)]
    assert baseline_genotype("random", NODES, "multiclass", K, seed=2, cells=3).key() == picks[2].key()
    assert len({g.key() for g in picks}) > 1
    for g in picks:
        pairs = [frozenset(c.inputs) for c in g.cells]
        assert len(set(pairs)) == len(pairs) and all(len(p) == 2 for p in pairs)
    with pytest.raises(SearchError, match="no distinct input pair"):
        baseline_genotype("random", ["a_1"], "multiclass", K, cells=1)  # one node: no pair at all


def test_unknown_baseline_and_cli(tmp_path):
    from _train_data import small_store
    from pipeline.cli import cli

    with pytest.raises(SearchError, match="unknown baseline"):
        baseline_genotype("transformer", NODES, "multiclass", K)
    small_store(tmp_path / "s.zarr")
    searched_genotype().save(tmp_path / "g.json")
    runner = CliRunner()
    res = runner.invoke(cli, ["genotype", "baseline", "aoa", "--store", str(tmp_path / "s.zarr"),
                              "--like", str(tmp_path / "g.json"), "-o", str(tmp_path / "aoa.json")])
    assert res.exit_code == 0, res.output
    g = Genotype.load(tmp_path / "aoa.json")
    assert g.cells[0].inputs == ("a_2", "b_3") and g.cells[1].steps[1].op == "LinearGLU"
    bad = searched_genotype().to_dict()
    bad["cells"][0]["inputs"] = ["a_9", "b_3"]
    bad["nodes"] = NODES + ["a_9"]
    Genotype.from_dict(bad).save(tmp_path / "bad.json")
    res = runner.invoke(cli, ["genotype", "baseline", "sum", "--store", str(tmp_path / "s.zarr"),
                              "--like", str(tmp_path / "bad.json"), "-o", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "a_9" in res.output and "Traceback" not in res.output


def test_cli_baseline_takes_the_settings_of_the_genotype_it_is_compared_with(tmp_path):
    from _train_data import small_store
    from pipeline.cli import cli

    small_store(tmp_path / "s.zarr")
    (tmp_path / "search").mkdir()
    searched_genotype(C=8, L=4).save(tmp_path / "search" / "genotype.json")
    runner = CliRunner()
    store = ["--store", str(tmp_path / "s.zarr")]
    res = runner.invoke(cli, ["genotype", "baseline", "late", *store, "--like", str(tmp_path / "search"),
                              "-o", str(tmp_path / "late.json")])  # a search run directory works too
    assert res.exit_code == 0, res.output
    g = Genotype.load(tmp_path / "late.json")
    assert (g.C, g.L, len(g.cells)) == (8, 4, 2) and "note:" not in res.output
    res = runner.invoke(cli, ["genotype", "baseline", "late", *store, "--like", str(tmp_path / "search"),
                              "--channels", "128", "-o", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "--channels 128 (the genotype has 8)" in res.output
    res = runner.invoke(cli, ["genotype", "baseline", "late", *store, "-o", str(tmp_path / "alone.json")])
    assert res.exit_code == 0 and "note: no --like genotype, so C=128, L=8, 2 Cells" in res.output
    assert Genotype.load(tmp_path / "alone.json").C == 128


def test_unimodal_genotype_feeds_the_found_cells_from_one_modality():
    from fusion_search.baselines import unimodal_genotype

    found = searched_genotype(C=8, L=4)  # Cells on (a_2, b_3) and (cell_1, a_3)
    for modality, deep in (("a", ("a_2", "a_3")), ("b", ("b_2", "b_3"))):
        g = unimodal_genotype(modality, found)
        assert g.cells[0].inputs == deep and g.cells[1].inputs == ("cell_1", deep[1])
        assert [c.steps for c in g.cells] == [c.steps for c in found.cells] and (g.C, g.L) == (8, 4)
        assert {n.split("_")[0] for n in g.used_nodes()} == {modality}
        _net(g)  # a valid network
    with pytest.raises(SearchError, match="no audio taps"):
        unimodal_genotype("audio", found)
