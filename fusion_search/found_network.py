"""The discrete fusion network a genotype describes (what `bmnas train` trains after search).

Only the store nodes some Cell reads get a ReshapeInput. Each Step runs its one primitive on its two
inner nodes (op(x, x) via `forward_same` when both inputs are the same node), each Cell projects the
concat of its `concat` inner nodes to C, and the head reads the concat of the `output` Cells.
A features dict with missing-modality masks is read as `fusion_search.missing` defines.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from fusion_search.blocks import CellOutput, ClassifierHead, ReshapeInput
from fusion_search.genotype import CellGene, Genotype, cell_name
from fusion_search.missing import apply_missing, placeholders
from fusion_search.primitives import build_primitive


class FoundCell(nn.Module):
    """A derived Cell: fixed Steps, fixed inputs, no architecture weights."""

    def __init__(self, gene: CellGene, C: int, L: int, dropout: float) -> None:
        super().__init__()
        self.gene = gene
        self.ops = nn.ModuleList(build_primitive(s.op, C, L) for s in gene.steps)
        self.out = CellOutput(len(gene.concat), C, dropout)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        states = [x, y]
        for step, op in zip(self.gene.steps, self.ops):
            i, j = step.inputs
            states.append(op.forward_same(states[i]) if i == j else op(states[i], states[j]))
        return self.out([states[i] for i in self.gene.concat])


class FoundNetwork(nn.Module):
    """Genotype + the (C_node, T_node) of the nodes it reads -> a trainable classifier."""

    def __init__(self, genotype: Genotype, node_shapes: Mapping[str, tuple[int, int]], dropout: float = 0.2,
                 learned_placeholders: bool = False) -> None:
        """`learned_placeholders`: one learned placeholder per input node for a missing modality
        (`fusion_search.missing`; a network trained with modality dropout)."""
        super().__init__()
        g = genotype
        self.genotype = g
        self.input_nodes = g.used_nodes()
        missing = [n for n in self.input_nodes if n not in node_shapes]
        if missing:
            raise KeyError(f"no shape for node(s) {', '.join(missing)}")
        self.reshapes = nn.ModuleList(
            ReshapeInput(node_shapes[n][0], g.C, g.L, dropout, t_node=node_shapes[n][1]) for n in self.input_nodes)
        self.cells = nn.ModuleList(FoundCell(c, g.C, g.L, dropout) for c in g.cells)
        self.head = ClassifierHead(len(g.output), g.C, g.L, g.num_classes)
        self.absent = placeholders(len(self.input_nodes), g.C, g.L, learned_placeholders)

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        states = apply_missing({n: r(features[n]) for n, r in zip(self.input_nodes, self.reshapes)}, features,
                               self.absent)
        for k, (gene, cell) in enumerate(zip(self.genotype.cells, self.cells)):
            states[cell_name(k)] = cell(states[gene.inputs[0]], states[gene.inputs[1]])
        return self.head([states[name] for name in self.genotype.output])


def count_parameters(module: nn.Module) -> int:
    """Trainable parameter count (the paper reports 0.98 M for its NTU fusion network)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
