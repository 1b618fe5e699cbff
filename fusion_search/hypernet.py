"""The BM-NAS hypernet: every architectural choice relaxed into softmax-weighted mixtures.

Upper level: Cell k sees all its predecessors S = [input nodes, Cell_1 .. Cell_{k-1}] through edges
with α over {Identity, Zero} (eq. 1) and receives their α-weighted sum (eq. 2).
Lower level: Step m of a Cell receives a β-weighted sum of the inner nodes [x, y, Step_1..] before
it (a softmax distribution over those edges, so its input keeps the scale of one node and "top-2 β"
is a ranking), and mixes the primitives with γ (eq. 10).

`step_inputs`:
- `sum` (paper / official code): one α set per Cell and one β distribution per Step; the mixed
  sum is both x and y, so every op runs once on (h, h) (`Primitive.forward_same`).
- `pair`: two α sets per Cell and two β distributions per Step, one per argument, so a Cell's x and
  y, and a Step's query and key, can differ during search as they do after derivation. With
  symmetric initial β both arguments would be the same (x + y)/2 mix and x, y (and their α) would get
  identical gradients, so `pair` starts each Step's first argument leaning to x and its second to y
  (softmax logit +1, `PAIR_INIT_BIAS`), the prior op(x, y); α stays 1e-3 noise as in `sum`.
Cell output: concat of the last `multiplier` inner nodes projected to C; network output: concat of
the last `multiplier` Cells, flattened, into a linear head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from fusion_search.blocks import CellOutput, ClassifierHead, ReshapeInput
from fusion_search.derive import derive_candidates, node_modalities
from fusion_search.missing import apply_missing, placeholders
from fusion_search.genotype import Genotype
from fusion_search.primitives import DEFAULT_PRIMITIVES, build_primitive

STEP_INPUT_MODES = ("sum", "pair")
PAIR_INIT_BIAS = 1.0  # logit head start of x (first argument) and y (second) in `pair` mode


@dataclass(frozen=True)
class HypernetSpec:
    """Shape of the search space (what the CLI options set)."""

    nodes: tuple[str, ...]
    node_shapes: dict[str, tuple[int, int]]
    task: str
    num_classes: int
    cells: int = 2
    steps: int = 2
    C: int = 128
    L: int = 8
    multiplier: int = 2
    primitives: tuple[str, ...] = DEFAULT_PRIMITIVES
    step_inputs: str = "sum"
    dropout: float = 0.2
    cross_modal: bool = False  # a Cell reading two store nodes reads two modalities (derive.py)
    reshape: bool = True
    learned_placeholders: bool = False  # a learned placeholder per node for a missing modality (missing.py)


class MixedStep(nn.Module):
    """Eq. 10: the γ-weighted sum of all primitives on one (x, y); Zero contributes nothing and is skipped."""

    def __init__(self, primitives: Sequence[str], C: int, L: int) -> None:
        super().__init__()
        self.names = list(primitives)
        self.live = [i for i, n in enumerate(self.names) if n != "Zero"]
        self.ops = nn.ModuleList(build_primitive(self.names[i], C, L) for i in self.live)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None, weights: torch.Tensor) -> torch.Tensor:
        w = weights.unbind()  # one view per weight, whose gradients come back as one stack (not one scatter each)
        out = None
        for i, op in zip(self.live, self.ops):
            z = op.forward_same(x) if y is None else op(x, y)
            out = w[i] * z if out is None else out + w[i] * z
        return out if out is not None else torch.zeros_like(x)


def _mix(weights: torch.Tensor, states: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_i weights[i] * states[i]; with `sum` inputs x is y, so their two weights scale it once."""
    weights = weights.unbind()
    if len(states) > 1 and states[1] is states[0]:
        out = (weights[0] + weights[1]) * states[0]
        rest = zip(weights[2:], states[2:])
    else:
        out = weights[0] * states[0]
        rest = zip(weights[1:], states[1:])
    for w, s in rest:
        out = out + w * s
    return out


class SearchCell(nn.Module):
    """A Cell during search: M mixed Steps over β-mixed inputs, then the Cell output projection."""

    def __init__(self, spec: HypernetSpec) -> None:
        super().__init__()
        self.pair = spec.step_inputs == "pair"
        self.multiplier = spec.multiplier
        self.steps = nn.ModuleList(MixedStep(spec.primitives, spec.C, spec.L) for _ in range(spec.steps))
        self.out = CellOutput(spec.multiplier, spec.C, spec.dropout)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None, betas: Sequence[torch.Tensor],
                gammas: torch.Tensor) -> torch.Tensor:
        """x, y: the Cell's arguments (y None: y is x); betas[m]: (A, 2+m) softmaxed; gammas: (M, ops)."""
        states = [x, x if y is None else y]
        gammas = gammas.unbind()
        for m, step in enumerate(self.steps):
            beta = betas[m].unbind()
            if self.pair:
                s = step(_mix(beta[0], states), _mix(beta[1], states), gammas[m])
            else:
                s = step(_mix(beta[0], states), None, gammas[m])
            states.append(s)
        return self.out(states[-self.multiplier:])


class Hypernet(nn.Module):
    """Weights w (reshape layers, ops, Cell outputs, head) plus architecture parameters α, β, γ."""

    def __init__(self, spec: HypernetSpec) -> None:
        super().__init__()
        self.spec = spec
        s = spec
        if s.step_inputs not in STEP_INPUT_MODES:
            raise ValueError(f"step_inputs must be one of {STEP_INPUT_MODES}")
        if s.reshape:
            self.reshapes = nn.ModuleList(
                ReshapeInput(s.node_shapes[n][0], s.C, s.L, s.dropout, t_node=s.node_shapes[n][1]) for n in s.nodes)
        self.cells = nn.ModuleList(SearchCell(s) for _ in range(s.cells))
        self.absent = placeholders(len(s.nodes), s.C, s.L, s.learned_placeholders)
        self.head = ClassifierHead(s.multiplier, s.C, s.L, s.num_classes)
        a = 2 if s.step_inputs == "pair" else 1
        n_in = len(s.nodes)
        arch = nn.ParameterDict()
        for k in range(s.cells):
            arch[f"alpha_{k}"] = nn.Parameter(1e-3 * torch.randn(a, n_in + k, 2))
            for m in range(s.steps):
                beta = 1e-3 * torch.randn(a, 2 + m)
                if a == 2:  # pair: each argument starts leaning to its own Cell input (x or y)
                    beta[0, 0] += PAIR_INIT_BIAS
                    beta[1, 1] += PAIR_INIT_BIAS
                arch[f"beta_{k}_{m}"] = nn.Parameter(beta)
            arch[f"gamma_{k}"] = nn.Parameter(1e-3 * torch.randn(s.steps, len(s.primitives)))
        self.arch = arch

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.arch.values())

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch.values()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        s = self.spec
        if s.reshape:
            states = {n: r(features[n]) for r, n in zip(self.reshapes, s.nodes)}
        else:
            states = {n: features[n] for n in s.nodes}
        inputs = torch.stack(list(apply_missing(states, features, self.absent).values()))  # `fusion_search.missing`
        n_in = inputs.shape[0]
        flat = inputs.reshape(n_in, -1)  # eq. 2 over the inputs as one (A, P) @ (P, N·C·L) product
        cells: list[torch.Tensor] = []
        for k, cell in enumerate(self.cells):
            alpha = self.arch[f"alpha_{k}"].softmax(-1)[..., 0]  # (A, P): Identity weight of each edge
            mixed = (alpha[:, :n_in] @ flat).view(alpha.shape[0], *inputs.shape[1:])
            for j, earlier in enumerate(cells):
                mixed = mixed + alpha[:, n_in + j].view(-1, 1, 1, 1) * earlier
            args = mixed.unbind()
            y = args[1] if s.step_inputs == "pair" else None
            betas = [self.arch[f"beta_{k}_{m}"].softmax(-1) for m in range(s.steps)]
            cells.append(cell(args[0], y, betas, self.arch[f"gamma_{k}"].softmax(-1)))
        return self.head(cells[-s.multiplier:])

    @torch.no_grad()
    def arch_weights(self) -> dict[str, list]:
        """Softmaxed α (A, P, 2), β [(A, 2+m)], γ (M, ops) per Cell, as numpy arrays."""
        s = self.spec
        return {
            "alpha": [self.arch[f"alpha_{k}"].softmax(-1).cpu().numpy() for k in range(s.cells)],
            "beta": [[self.arch[f"beta_{k}_{m}"].softmax(-1).cpu().numpy() for m in range(s.steps)]
                     for k in range(s.cells)],
            "gamma": [self.arch[f"gamma_{k}"].softmax(-1).cpu().numpy() for k in range(s.cells)],
        }

    def genotype(self) -> Genotype:
        """The current discrete architecture (eqs. 3 and 11, top-2 β)."""
        return self.candidates(1)[0]

    def candidates(self, k: int) -> list[Genotype]:
        """`genotype()` first, then up to k-1 runner-up input pairings by α (`derive.ranked_pair_sets`)."""
        s = self.spec
        w = self.arch_weights()
        return derive_candidates(w["alpha"], w["beta"], w["gamma"], ops=s.primitives, nodes=s.nodes, task=s.task,
                                 num_classes=s.num_classes, C=s.C, L=s.L, multiplier=s.multiplier, k=k,
                                 modalities=node_modalities(s.nodes) if s.cross_modal else None)


def arch_weights_to_lists(weights: dict[str, list]) -> dict[str, list]:
    """JSON-ready copy of `Hypernet.arch_weights()` (for the per-epoch history)."""
    def conv(v):
        return v.round(6).tolist() if isinstance(v, np.ndarray) else [conv(x) for x in v]
    return {k: conv(v) for k, v in weights.items()}
