"""Small real stores and a 'searched' genotype for the train/evaluate/ablate/report tests.

Stores come from the search tests' planted generator (nodes a_1..a_3, b_1..b_3; only a_2 and b_3
carry the label), with a strong signal so a few epochs learn it.
"""

from __future__ import annotations

from pathlib import Path

from _search_data import NODES, planted_store

__all__ = ["NODES", "small_store", "searched_genotype", "glu_genotype"]


def small_store(path: Path, task: str = "multiclass", n: int = 160, C: int = 6, T: int = 4, signal: float = 3.0):
    """4-class (2·bit_a2 + bit_b3) or 3-label ([bit_a2, bit_b3, both]) store; splits 5/8, 2/8, 1/8."""
    return planted_store(path, "joint" if task == "multiclass" else "multilabel", n=n, C=C, T=T, signal=signal)


def searched_genotype(task: str = "multiclass", k: int = 4, C: int = 8, L: int = 4):
    """A plausible 'searched' genotype that reads the planted pair (two Cells, two Steps each)."""
    from fusion_search.genotype import Genotype

    return Genotype.from_dict({
        "format": "bmnas-genotype", "version": 1, "task": task, "num_classes": k, "nodes": NODES,
        "C": C, "L": L, "multiplier": 2,
        "cells": [{"inputs": ["a_2", "b_3"],
                   "steps": [{"op": "ConcatFC", "inputs": [0, 1]}, {"op": "LinearGLU", "inputs": [2, 1]}],
                   "concat": [2, 3]},
                  {"inputs": ["cell_1", "a_3"],
                   "steps": [{"op": "Sum", "inputs": [0, 1]}, {"op": "Attention", "inputs": [2, 0]}],
                   "concat": [2, 3]}],
        "output": ["cell_1", "cell_2"]})


def glu_genotype():
    """One Cell, one Step: LinearGLU(a_2, b_3) = a_2 W1 ⊙ sigmoid(b_3 W2), a multiplicative fusion of
    the planted pair (a missing value input zeroes its output unless the network learned a placeholder)."""
    from fusion_search.genotype import Genotype

    return Genotype.from_dict({
        "format": "bmnas-genotype", "version": 1, "task": "multiclass", "num_classes": 4, "C": 8, "L": 4,
        "multiplier": 1, "nodes": NODES, "output": ["cell_1"],
        "cells": [{"inputs": ["a_2", "b_3"], "steps": [{"op": "LinearGLU", "inputs": [0, 1]}], "concat": [2]}]})
