"""Derive a discrete genotype from architecture weights (paper eqs. 3 and 11, top-2 β).

Works on softmaxed weights as numpy arrays so it can be checked against hand-computed values:
- `alpha[k]`: (A, P_k, 2) weights over {Identity, Zero} on each of Cell k's P_k predecessor edges,
  A = 1 (`sum`: one α set) or 2 (`pair`: one set for the Cell's x argument, one for y).
- `beta[k][m]`: (A, 2 + m) distribution(s) over the inner nodes that feed Step m of Cell k.
- `gamma[k]`: (M, |ops|) distribution over the primitives of each Step.

Upper level (eq. 3): a predecessor's strength is its largest non-Zero weight (here: Identity);
`sum` picks the pair i < j maximising a_i · a_j; `pair` picks the ordered pair (i for x, j for y),
i != j, maximising a^x_i · a^y_j. Both skip pairs an earlier Cell already took (the paper's
"different predecessors": distinct unordered pairs). Unlike the official code, earlier Cells are
candidates too, as the paper's node sequence S and Fig. 3 have it. Ties go to the lowest indices.
Lower level: op = argmax γ (eq. 11, Zero included: it "discards an inner step"); inputs = the top-2
β in rank order for `sum` (repeats impossible), argmax of each β for `pair` (repeats allowed).

`modalities` (optional, one name per store node) restricts a Cell that reads two store nodes to two
modalities, as MFAS's fusion layers pair one feature of each modality; pairs with a Cell are always
allowed. Why: eq. 3 ranks inputs by α, and α marks loud inputs (see `ranked_pair_sets`); on the demo
store most derived Cells read two skeleton taps and score at the skeleton's own ceiling on val, while
the cross-modal pairs the same searches derive score far above it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fusion_search.genotype import CellGene, Genotype, StepGene, cell_name

IDENTITY = 0  # index of Identity in the {Identity, Zero} edge ops


def _pair_scores(w: np.ndarray, taken: set[frozenset[int]],
                 modalities: Sequence[str] | None = None) -> list[tuple[float, tuple[int, int]]]:
    """Eq. 3's score of every allowed pair of one Cell, best first (ties: lowest indices first)."""
    strength = np.asarray(w, dtype=np.float64)[..., IDENTITY]  # max over the non-Zero edge ops
    sx, sy = strength[0], strength[-1]
    n = sx.shape[0]

    def same_modality(i: int, j: int) -> bool:
        m = modalities
        return m is not None and i < len(m) and j < len(m) and m[i] == m[j]

    scored = [(float(sx[i] * sy[j]), (i, j)) for i in range(n) for j in range(n)
              if i != j and not (w.shape[0] == 1 and j < i) and frozenset((i, j)) not in taken
              and not same_modality(i, j)]
    return sorted(scored, key=lambda t: -t[0])  # stable: equal scores keep index order


def select_pairs(alpha: Sequence[np.ndarray], modalities: Sequence[str] | None = None) -> list[tuple[int, int]]:
    """Eq. 3 per Cell with distinct predecessor pairs across Cells; indices into [inputs, cells]."""
    taken: set[frozenset[int]] = set()
    pairs = []
    for w in alpha:
        scored = _pair_scores(np.asarray(w), taken, modalities)
        if not scored:
            raise ValueError("no predecessor pair left for a Cell; a search needs at least two input nodes")
        best = scored[0][1]
        taken.add(frozenset(best))
        pairs.append(best)
    return pairs


def ranked_pair_sets(alpha: Sequence[np.ndarray], k: int,
                     modalities: Sequence[str] | None = None) -> list[list[tuple[int, int]]]:
    """Up to `k` pair assignments for all Cells: eq. 3's greedy one first, then the next best by the
    product of the Cells' pair scores (beam search of width k; distinct pairs across Cells).

    Why: α of an {Identity, Zero} edge acts as a gain on its input, so the top-ranked pair is often
    not the one the hypernet relies on; scoring a few runner-up pairs recovers it (see search.py).
    """
    greedy = select_pairs(alpha, modalities)
    beam: list[tuple[float, list[tuple[int, int]]]] = [(1.0, [])]
    for w in alpha:
        grown = []
        for score, pairs in beam:
            taken = {frozenset(p) for p in pairs}
            grown += [(score * s, pairs + [p]) for s, p in _pair_scores(np.asarray(w), taken, modalities)[:k]]
        beam = sorted(grown, key=lambda t: -t[0])[:k]
    ranked = [greedy] + [pairs for _, pairs in beam if pairs != greedy]
    return ranked[:k]


def select_step(beta: np.ndarray, gamma: np.ndarray, ops: Sequence[str]) -> StepGene:
    """Eq. 11 for the op; top-2 (one distribution) or per-argument argmax (two) for the inputs."""
    beta = np.asarray(beta, dtype=np.float64)
    op = ops[int(np.argmax(gamma))]
    if beta.shape[0] == 1:
        order = np.argsort(-beta[0], kind="stable")
        return StepGene(op, (int(order[0]), int(order[1])))
    return StepGene(op, (int(np.argmax(beta[0])), int(np.argmax(beta[1]))))


def derive_genotype(alpha: Sequence[np.ndarray], beta: Sequence[Sequence[np.ndarray]], gamma: Sequence[np.ndarray],
                    *, ops: Sequence[str], nodes: Sequence[str], task: str, num_classes: int, C: int, L: int,
                    multiplier: int, modalities: Sequence[str] | None = None) -> Genotype:
    """The whole genotype: Cells read their pairs, Steps their ops and inputs; outputs are the last ones."""
    return derive_candidates(alpha, beta, gamma, ops=ops, nodes=nodes, task=task, num_classes=num_classes, C=C,
                             L=L, multiplier=multiplier, k=1, modalities=modalities)[0]


def derive_candidates(alpha: Sequence[np.ndarray], beta: Sequence[Sequence[np.ndarray]],
                      gamma: Sequence[np.ndarray], *, ops: Sequence[str], nodes: Sequence[str], task: str,
                      num_classes: int, C: int, L: int, multiplier: int, k: int,
                      modalities: Sequence[str] | None = None) -> list[Genotype]:
    """The `k` best-ranked genotypes (`ranked_pair_sets`); all share the Steps of eq. 11 / top-2 β."""
    return [_genotype(pairs, beta, gamma, ops, nodes, task, num_classes, C, L, multiplier)
            for pairs in ranked_pair_sets(alpha, k, modalities)]


def node_modalities(nodes: Sequence[str]) -> list[str]:
    """The modality of each store node, from its `<modality>_<k>` name (the whole name otherwise)."""
    return [n.rsplit("_", 1)[0] if n.rsplit("_", 1)[-1].isdigit() else n for n in nodes]


def _genotype(pairs, beta, gamma, ops, nodes, task, num_classes, C, L, multiplier) -> Genotype:
    names = list(nodes) + [cell_name(k) for k in range(len(pairs))]
    cells = []
    for k, (i, j) in enumerate(pairs):
        steps = tuple(select_step(b, gamma[k][m], ops) for m, b in enumerate(beta[k]))
        n_inner = 2 + len(steps)
        cells.append(CellGene((names[i], names[j]), steps, tuple(range(n_inner - multiplier, n_inner))))
    output = tuple(cell_name(k) for k in range(len(cells) - multiplier, len(cells)))
    return Genotype(task, num_classes, tuple(nodes), C, L, multiplier, tuple(cells), output)


def uniform_op_variants(genotype: Genotype, ops: Sequence[str]) -> list[Genotype]:
    """The genotype with every Step set to one primitive, for each primitive but Zero (same Cell
    inputs, Step inputs and concat).

    Why: on small data γ stays near uniform (on the demo store, after a whole search, every op's
    weight is still within about 0.1 of 1/5), so eq. 11's argmax is close to a coin toss between
    ops, and the parameter-free Attention and Zero win it most often; scoring these variants lets
    the found network's val score choose the op where γ cannot (`--op-variants`).
    """
    out = []
    for op in ops:
        if op == "Zero":
            continue
        cells = tuple(CellGene(c.inputs, tuple(StepGene(op, st.inputs) for st in c.steps), c.concat)
                      for c in genotype.cells)
        out.append(Genotype(genotype.task, genotype.num_classes, genotype.nodes, genotype.C, genotype.L,
                            genotype.multiplier, cells, genotype.output))
    return out
