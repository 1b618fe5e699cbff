"""Named baseline fusion networks as ordinary genotypes (the paper's Fig. 2 and Tables 6-7).

Every baseline is a point of the BM-NAS search space, so `bmnas train`/`evaluate` run it unchanged.
A genotype has two independent halves: the *feature selection* (which inputs each Cell reads) and
the *Cell structure* (its Steps and concat). The ablations swap exactly one half:

- fusion strategies (Table 7) keep the feature selection and replace every Cell's structure:
  `sum` (DARTS: x + y), `concatfc` (MFAS: ReLU([x; y]W + b)), `mha` (two-head attention, Fig. 2d:
  two Attention(x, y) Steps whose concat the Cell output projects, i.e. W^O), `aoa` (attention on
  attention, Fig. 2c: v̂ = Attention(x, y), then LinearGLU(v̂, x) = v̂W1 ⊙ sigmoid(xW2), the
  information vector gated by the query);
- feature selections (Table 6) keep the Cell structure and replace the inputs: `late` (only the
  deepest tap of each modality: Cell 1 fuses them, later Cells fuse the previous Cell with one
  deepest tap in turn), `random` (random distinct input pairs over nodes and earlier Cells, seeded).

With a `template` genotype (normally the searched one) the kept half comes from it; without one the
feature selection is the late-fusion one and the Cell structure is `REFERENCE_STEPS`.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from fusion_search.errors import SearchError
from fusion_search.genotype import CellGene, Genotype, StepGene, cell_name

FUSION_STRATEGIES: dict[str, tuple[tuple[StepGene, ...], tuple[int, ...]]] = {
    "sum": ((StepGene("Sum", (0, 1)),), (2,)),
    "concatfc": ((StepGene("ConcatFC", (0, 1)),), (2,)),
    "mha": ((StepGene("Attention", (0, 1)), StepGene("Attention", (0, 1))), (2, 3)),
    "aoa": ((StepGene("Attention", (0, 1)), StepGene("LinearGLU", (2, 0))), (3,)),
}
FEATURE_SELECTIONS = ("late", "random")
BASELINES: tuple[str, ...] = tuple(FUSION_STRATEGIES) + FEATURE_SELECTIONS

# A fixed two-Step Cell (ConcatFC then attention of the fused state over y) used by `late` and
# `random` when no template genotype gives the Cell structure.
REFERENCE_STEPS = (StepGene("ConcatFC", (0, 1)), StepGene("Attention", (2, 1)))
REFERENCE_CONCAT = (2, 3)

_NODE = re.compile(r"^(?P<modality>.+)_(?P<k>\d+)$")


def deepest_taps(nodes: Sequence[str]) -> list[str]:
    """The deepest node of each modality (`<modality>_<k>`, largest k), in order of first appearance.

    Nodes not named `<modality>_<k>` count as a modality of their own.
    """
    best: dict[str, tuple[int, str]] = {}
    for n in nodes:
        m = _NODE.match(n)
        mod, k = (m["modality"], int(m["k"])) if m else (n, 0)
        if mod not in best or k > best[mod][0]:
            best[mod] = (k, n)
    return [node for _, node in best.values()]


def _late_inputs(nodes: Sequence[str], n_cells: int) -> list[tuple[str, str]]:
    deep = deepest_taps(nodes)
    if len(deep) < 2:
        raise SearchError(f"late fusion needs at least two modalities; the nodes {', '.join(nodes)} "
                          "are all one modality (names are <modality>_<k>)")
    pairs = [(deep[0], deep[1])]
    for k in range(1, n_cells):
        pairs.append((cell_name(k - 1), deep[(k + 1) % len(deep)]))
    return pairs


def _random_inputs(nodes: Sequence[str], n_cells: int, seed: int) -> list[tuple[str, str]]:
    """Distinct unordered pairs over [nodes, earlier Cells], as the paper's random baseline."""
    rng = np.random.default_rng(seed)
    taken: set[frozenset[str]] = set()
    pairs = []
    for k in range(n_cells):
        preds = list(nodes) + [cell_name(j) for j in range(k)]
        free = [(a, b) for i, a in enumerate(preds) for b in preds[i + 1:] if frozenset((a, b)) not in taken]
        if not free:
            raise SearchError(f"random: no distinct input pair left for {cell_name(k)}; give more nodes")
        a, b = free[int(rng.integers(len(free)))]
        if rng.integers(2):
            a, b = b, a
        taken.add(frozenset((a, b)))
        pairs.append((a, b))
    return pairs


def _with_inputs(cells: Sequence[CellGene], pairs: Sequence[tuple[str, str]]) -> tuple[CellGene, ...]:
    return tuple(CellGene(p, c.steps, c.concat) for c, p in zip(cells, pairs))


def baseline_genotype(name: str, nodes: Sequence[str], task: str, num_classes: int, *, seed: int = 0,
                      C: int = 128, L: int = 8, cells: int = 2, template: Genotype | None = None) -> Genotype:
    """The named baseline on these store nodes (see module docstring for what `template` keeps).

    With a template, C, L, the number of Cells, the output Cells and the multiplier come from it.
    """
    if name not in BASELINES:
        raise SearchError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    nodes = list(nodes)
    if template is not None:
        missing = [n for n in template.used_nodes() if n not in nodes]
        if missing:
            raise SearchError(f"template genotype reads node(s) {', '.join(missing)} the store lacks")
        C, L, n_cells = template.C, template.L, len(template.cells)
        output, multiplier = template.output, template.multiplier
        base = template.cells
    else:
        if cells < 1:
            raise SearchError(f"--cells {cells}: a baseline needs at least one Cell")
        n_cells, multiplier = cells, min(2, cells)
        output = tuple(cell_name(k) for k in range(n_cells - multiplier, n_cells))
        # inputs are only kept by the fusion strategies, so only they need two modalities
        pairs = _late_inputs(nodes, n_cells) if name in FUSION_STRATEGIES else [(nodes[0], nodes[0])] * n_cells
        base = tuple(CellGene(p, REFERENCE_STEPS, REFERENCE_CONCAT) for p in pairs)
    if name in FUSION_STRATEGIES:
        steps, concat = FUSION_STRATEGIES[name]
        new_cells = tuple(CellGene(c.inputs, steps, concat) for c in base)
    elif name == "late":
        new_cells = _with_inputs(base, _late_inputs(nodes, n_cells))
    else:
        new_cells = _with_inputs(base, _random_inputs(nodes, n_cells, seed))
    g = Genotype(task, num_classes, tuple(nodes), C, L, multiplier, new_cells, tuple(output))
    return Genotype.from_dict(g.to_dict(), f"baseline {name}")  # same validation as a file


def baseline_for_store(name: str, store, *, seed: int = 0, C: int = 128, L: int = 8, cells: int = 2,
                       template: Genotype | None = None) -> Genotype:
    """`baseline_genotype` on an opened FeatureStore (its nodes, task and class count)."""
    return baseline_genotype(name, store.nodes, store.task, store.num_classes, seed=seed, C=C, L=L,
                             cells=cells, template=template)


def unimodal_genotype(modality: str, template: Genotype) -> Genotype:
    """The template's network on one modality's taps: what fusion adds is measured against the same
    Cells, C and L fed by one modality (Cell 1 reads its two deepest taps, later Cells the previous
    Cell and the next deeper tap in turn)."""
    taps = sorted((int(m["k"]), n) for n in template.nodes if (m := _NODE.match(n)) and m["modality"] == modality)
    if not taps:
        raise SearchError(f"no {modality} taps among the nodes {', '.join(template.nodes)} (names are <modality>_<k>)")
    deep = [n for _, n in taps][-2:]
    pairs = [(deep[0], deep[-1])] + [(cell_name(k - 1), deep[k % len(deep)]) for k in range(1, len(template.cells))]
    g = Genotype(template.task, template.num_classes, template.nodes, template.C, template.L, template.multiplier,
                 _with_inputs(template.cells, pairs), template.output)
    return Genotype.from_dict(g.to_dict(), f"unimodal {modality}")
