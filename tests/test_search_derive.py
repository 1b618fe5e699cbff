"""Derivation (eq. 3 with distinct pairs, eq. 11, top-2 β) against hand-computed weights; hypernet and found network."""

import numpy as np
import pytest
import torch

from _search_data import single_thread  # noqa: F401

from fusion_search.derive import (derive_candidates, derive_genotype, node_modalities, ranked_pair_sets,
                                  select_pairs, select_step, uniform_op_variants)
from fusion_search.found_network import FoundNetwork, count_parameters
from fusion_search.genotype import Genotype
from fusion_search.hypernet import Hypernet, HypernetSpec
from fusion_search.primitives import DEFAULT_PRIMITIVES

OPS = list(DEFAULT_PRIMITIVES)  # Zero, Sum, Attention, LinearGLU, ConcatFC

pytestmark = pytest.mark.usefixtures("single_thread")


def edges(*strengths):
    """(A, P, 2) softmaxed {Identity, Zero} weights from Identity strengths, one row per argument set."""
    a = np.array(strengths, dtype=float)
    return np.stack([a, 1 - a], axis=-1)


def test_eq3_sum_mode_picks_max_product_and_skips_taken_pairs():
    cell1 = edges([0.9, 0.2, 0.8, 0.7])            # (0,2): 0.72 beats (0,3) 0.63, (2,3) 0.56
    cell2 = edges([0.9, 0.1, 0.85, 0.3, 0.5])      # (0,2) 0.765 is taken -> (0,4) 0.45 beats (2,4) 0.425
    assert select_pairs([cell1, cell2]) == [(0, 2), (0, 4)]


def test_eq3_pair_mode_orders_x_and_y_and_skips_taken_unordered_pairs():
    cell1 = edges([0.1, 0.9, 0.2, 0.3], [0.2, 0.95, 0.1, 0.8])   # ax1*ay3 = 0.72 -> x=1, y=3
    cell2 = edges([0.1, 0.9, 0.2, 0.95, 0.1], [0.1, 0.9, 0.1, 0.8, 0.2])
    # ax3*ay1 = 0.855 and ax1*ay3 = 0.72 are the taken pair {1,3}; next best ax3*ay4 = 0.19
    assert select_pairs([cell1, cell2]) == [(1, 3), (3, 4)]


def test_cross_modal_pairs_skip_two_nodes_of_one_modality_but_not_cells():
    mods = node_modalities(["video_1", "video_2", "skeleton_1", "skeleton_2"])
    assert mods == ["video", "video", "skeleton", "skeleton"]
    cell1 = edges([0.9, 0.8, 0.3, 0.7])         # (0,1) 0.72 is two video taps -> (0,3) 0.63
    cell2 = edges([0.9, 0.8, 0.3, 0.2, 0.95])   # (0,4) 0.855: a cell with a store node is allowed
    assert select_pairs([cell1, cell2]) == [(0, 1), (0, 4)]
    assert select_pairs([cell1, cell2], mods) == [(0, 3), (0, 4)]
    assert all(mods[i] != mods[j] for sets in ranked_pair_sets([cell1, cell2], 4, mods)
               for i, j in sets if max(i, j) < 4)


def test_eq3_never_pairs_a_node_with_itself():
    assert select_pairs([edges([0.99, 0.01, 0.02], [0.99, 0.01, 0.03])]) == [(0, 2)]


def test_ranked_pair_sets_start_with_eq3_then_follow_the_product_of_pair_scores():
    cell1 = edges([0.9, 0.2, 0.8, 0.7])        # pairs: (0,2) .72, (0,3) .63, (2,3) .56, ...
    cell2 = edges([0.9, 0.1, 0.85, 0.3, 0.5])  # pairs: (0,2) .765, (0,4) .45, (2,4) .425, ...
    ranked = ranked_pair_sets([cell1, cell2], 4)
    assert ranked[0] == select_pairs([cell1, cell2]) == [(0, 2), (0, 4)]  # greedy eq. 3: (0,2) taken in cell 2
    # then by product: (0,3)+(0,2) .63*.765=.482, (2,3)+(0,2) .56*.765=.428, (0,2)+(2,4) .72*.425=.306
    assert ranked[1:] == [[(0, 3), (0, 2)], [(2, 3), (0, 2)], [(0, 2), (2, 4)]]
    assert all(len({frozenset(p) for p in r}) == 2 for r in ranked)  # pairs stay distinct across Cells
    assert ranked_pair_sets([cell1, cell2], 1) == [ranked[0]]


def test_candidates_differ_only_in_their_input_pairs():
    alpha = [edges([0.9, 0.2, 0.8, 0.7]), edges([0.9, 0.1, 0.85, 0.3, 0.5])]
    beta = [[np.array([[0.6, 0.4]]), np.array([[0.1, 0.3, 0.6]])]] * 2
    gamma = [np.array([[0, 0, 0, 0, 1.0], [0, 0, 1.0, 0, 0]])] * 2
    kw = dict(ops=OPS, nodes=["v_1", "v_2", "s_1", "s_2"], task="multiclass", num_classes=5, C=8, L=4, multiplier=2)
    cands = derive_candidates(alpha, beta, gamma, k=3, **kw)
    assert cands[0] == derive_genotype(alpha, beta, gamma, **kw)
    assert [c.cells[0].inputs for c in cands] == [("v_1", "s_1"), ("v_1", "s_2"), ("s_1", "s_2")]
    assert len({c.key() for c in cands}) == 3
    assert all(c.cells[k].steps == cands[0].cells[k].steps for c in cands for k in range(2))


def test_steps_top2_beta_argmax_gamma():
    gamma = np.array([0.1, 0.3, 0.25, 0.2, 0.15])
    assert select_step(np.array([[0.2, 0.5, 0.3]]), gamma, OPS).op == "Sum"
    assert select_step(np.array([[0.2, 0.5, 0.3]]), gamma, OPS).inputs == (1, 2)   # rank order
    assert select_step(np.array([[0.5, 0.5]]), gamma, OPS).inputs == (0, 1)        # ties: lower index
    pair = select_step(np.array([[0.1, 0.2, 0.7], [0.1, 0.2, 0.7]]), gamma, OPS)
    assert pair.inputs == (2, 2)                                                   # repeats allowed
    zero = select_step(np.array([[0.5, 0.5]]), np.array([0.4, 0.15, 0.15, 0.15, 0.15]), OPS)
    assert zero.op == "Zero"                                                       # eq. 11 includes Zero


def test_derive_genotype_names_nodes_and_cells():
    alpha = [edges([0.9, 0.2, 0.8, 0.7]), edges([0.9, 0.1, 0.85, 0.3, 0.5])]
    beta = [[np.array([[0.6, 0.4]]), np.array([[0.1, 0.3, 0.6]])]] * 2
    gamma = [np.array([[0, 0, 0, 0, 1.0], [0, 0, 1.0, 0, 0]])] * 2
    g = derive_genotype(alpha, beta, gamma, ops=OPS, nodes=["v_1", "v_2", "s_1", "s_2"], task="multiclass",
                        num_classes=5, C=8, L=4, multiplier=2)
    d = g.to_dict()
    assert [c["inputs"] for c in d["cells"]] == [["v_1", "s_1"], ["v_1", "cell_1"]]
    assert d["cells"][0]["steps"] == [{"op": "ConcatFC", "inputs": [0, 1]}, {"op": "Attention", "inputs": [2, 1]}]
    assert d["cells"][0]["concat"] == [2, 3] and d["output"] == ["cell_1", "cell_2"]
    assert Genotype.from_dict(d) == g


def _spec(mode="sum", **kw):
    shapes = {"v_1": (6, 3), "v_2": (5, 8), "s_1": (4, 2)}
    return HypernetSpec(nodes=tuple(shapes), node_shapes=shapes, task="multiclass", num_classes=3, cells=2,
                        steps=2, C=8, L=4, multiplier=2, step_inputs=mode, dropout=0.0, **kw)


def _batch(n=5):
    g = torch.Generator().manual_seed(1)
    return {"v_1": torch.randn(n, 6, 3, generator=g), "v_2": torch.randn(n, 5, 8, generator=g),
            "s_1": torch.randn(n, 4, 2, generator=g)}


@pytest.mark.parametrize("mode,args", [("sum", 1), ("pair", 2)])
def test_hypernet_shapes_and_parameter_split(mode, args):
    torch.manual_seed(0)
    net = Hypernet(_spec(mode))
    assert net(_batch()).shape == (5, 3)
    assert net.arch["alpha_1"].shape == (args, 4, 2)         # 3 inputs + cell_1
    assert net.arch["beta_0_1"].shape == (args, 3)            # x, y, step_1
    assert net.arch["gamma_0"].shape == (2, len(OPS))
    arch, weights = {id(p) for p in net.arch_parameters()}, {id(p) for p in net.weight_parameters()}
    assert not arch & weights and len(arch | weights) == len(list(net.parameters()))


def test_hypernet_genotype_follows_its_arch_weights():
    torch.manual_seed(0)
    net = Hypernet(_spec("sum"))
    with torch.no_grad():
        net.arch["alpha_0"].copy_(torch.tensor([[[2.0, 0.0], [-2.0, 0.0], [1.0, 0.0]]]))   # v_1, s_1 strongest
        net.arch["gamma_0"].zero_()
        net.arch["gamma_0"][0, OPS.index("LinearGLU")] = 3.0
        net.arch["beta_0_1"].copy_(torch.tensor([[0.0, 1.0, 2.0]]))
    cell = net.genotype().cells[0]
    assert cell.inputs == ("v_1", "s_1")
    assert cell.steps[0].op == "LinearGLU" and cell.steps[1].inputs == (2, 1)


def test_alpha_gets_gradient_and_zero_weight_never_runs():
    torch.manual_seed(0)
    net = Hypernet(_spec("pair"))
    loss = net(_batch()).logsumexp(1).mean()
    grads = torch.autograd.grad(loss, net.arch_parameters())
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert all("Zero" not in [type(op).__name__ for op in step.ops] for cell in net.cells for step in cell.steps)


def test_found_network_runs_and_counts_parameters_by_hand():
    d = {"format": "bmnas-genotype", "version": 1, "task": "multiclass", "num_classes": 3,
         "nodes": ["v_1", "v_2", "s_1"], "C": 8, "L": 4, "multiplier": 2,
         "cells": [{"inputs": ["v_2", "s_1"], "steps": [{"op": "ConcatFC", "inputs": [0, 1]},
                                                          {"op": "LinearGLU", "inputs": [2, 2]}], "concat": [2, 3]},
                   {"inputs": ["cell_1", "s_1"], "steps": [{"op": "Attention", "inputs": [1, 0]}], "concat": [2]}],
         "output": ["cell_1", "cell_2"]}
    g = Genotype.from_dict(d)
    net = FoundNetwork(g, {"v_1": (6, 3), "v_2": (5, 8), "s_1": (4, 2)}, dropout=0.0)
    out = net(_batch())
    assert out.shape == (5, 3)
    out.sum().backward()
    C, L = 8, 4
    reshape = 2 * ((5 * C + 2 * C) + (4 * C + 2 * C))            # v_2, s_1 (v_1 unused): conv + BN, level and dynamics
    cells = (2 * C * C + C) + 2 * C * C + (2 * C * C + 2 * C) + (C * C + 2 * C)   # ops + output projections
    head = 2 * C * L * 3 + 3
    assert count_parameters(net) == reshape + cells + head


def test_uniform_op_variants_keep_inputs_and_set_every_step_to_one_primitive():
    d = {"format": "bmnas-genotype", "version": 1, "task": "multiclass", "num_classes": 3,
         "nodes": ["v_1", "v_2", "s_1"], "C": 8, "L": 4, "multiplier": 2,
         "cells": [{"inputs": ["v_2", "s_1"], "steps": [{"op": "Zero", "inputs": [0, 1]},
                                                          {"op": "Attention", "inputs": [2, 1]}], "concat": [2, 3]},
                   {"inputs": ["cell_1", "s_1"], "steps": [{"op": "Attention", "inputs": [1, 0]}], "concat": [2]}],
         "output": ["cell_1", "cell_2"]}
    g = Genotype.from_dict(d)
    variants = uniform_op_variants(g, OPS)
    assert [v.cells[0].steps[0].op for v in variants] == ["Sum", "Attention", "LinearGLU", "ConcatFC"]
    for v in variants:
        assert {s.op for c in v.cells for s in c.steps} == {v.cells[0].steps[0].op}
        assert [c.inputs for c in v.cells] == [c.inputs for c in g.cells]
        assert [[s.inputs for s in c.steps] for c in v.cells] == [[s.inputs for s in c.steps] for c in g.cells]
        assert [c.concat for c in v.cells] == [c.concat for c in g.cells] and v.output == g.output
        Genotype.from_dict(v.to_dict())  # valid genotypes
