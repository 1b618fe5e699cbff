"""What "a modality is missing" means for a fusion network, defined once.

A batch's features dict may carry, beside its nodes, one boolean mask per modality under the key
`missing:<modality>` (shape (N,): True where that sample lacks the modality). A network reads the
mask after its reshape layers: each node of a missing modality enters the Cells, for the masked
samples, as that node's placeholder (`apply_missing`). A network trained or searched with modality
dropout learns one placeholder per node (a (C, L) parameter, zeros at first, `placeholders`); any
other network uses zeros, the state an input has when it carries nothing. Why learned: a Cell that
multiplies its inputs (LinearGLU, Attention) turns a zero input into a zero output and loses the
other modality with it; a learned placeholder can carry a constant that lets the other one through
(tests/test_robustness.py). Only two options set masks: `--modality-dropout P` while training (train, finetune, search; recorded in the run's
config) and `bmnas evaluate --robustness`. Stores never hold missing rows: NaN or absent data is
refused as everywhere else, never turned into a mask.

Modality dropout (`ModalityDropout`): each sample, with probability P, loses one of the modalities
the network reads, chosen uniformly, never all of them. Masks are drawn from a generator seeded by
(seed, epoch), not the global RNG, so a resumed run draws the same masks and P = 0 changes nothing.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from fusion_search.derive import node_modalities
from fusion_search.errors import SearchError

MISSING = "missing:"  # prefix of the mask entries of a features dict


def mask_key(modality: str) -> str:
    return f"{MISSING}{modality}"


def modalities_of(nodes: Sequence[str]) -> list[str]:
    """The modalities of `nodes` (`<modality>_<k>` names), in first-seen order."""
    return list(dict.fromkeys(node_modalities(nodes)))


def apply_missing(states: dict[str, torch.Tensor], features: Mapping[str, Any],
                  placeholders: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """`states` (node -> (N, C, L), after the reshape layers) with the masked samples of each missing
    modality's nodes replaced by the node's placeholder (`placeholders[i]` for the i-th node of
    `states`; zeros without); unchanged when `features` carries no mask."""
    masks = {k[len(MISSING):]: v for k, v in features.items() if k.startswith(MISSING)}
    if not masks:
        return states
    out = dict(states)
    for i, (node, modality) in enumerate(zip(states, node_modalities(list(states)))):
        mask = masks.get(modality)
        if mask is not None:
            x = states[node]
            fill = torch.zeros_like(x) if placeholders is None else placeholders[i].expand_as(x)
            out[node] = torch.where(mask.to(x.device).view(-1, *([1] * (x.dim() - 1))), fill, x)
    return out


def placeholders(nodes: int, C: int, L: int, learned: bool) -> nn.Parameter | None:
    """The learned placeholders of a network's `nodes` input nodes (zeros at first), or None (zeros)."""
    return nn.Parameter(torch.zeros(nodes, C, L)) if learned else None


def check_dropout(p: float, nodes: Sequence[str], option: str = "--modality-dropout") -> float:
    """A usable dropout probability for a network reading `nodes`: in [0, 1), and (when above 0) two
    modalities at least, since one is never dropped alone."""
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise SearchError(f"{option} {p!r}: use a probability in [0, 1)")
    mods = modalities_of(nodes)
    if p > 0 and len(mods) < 2:
        raise SearchError(f"{option} {p:g}: the network reads one modality ({', '.join(mods)}), and a sample "
                          "never loses all of them; drop the option")
    return p


class ModalityDropout:
    """Training batches with modality-dropout masks (see the module docstring); `len` is the batches'."""

    def __init__(self, batches: Iterable[tuple[dict[str, torch.Tensor], torch.Tensor]], p: float,
                 modalities: Sequence[str], seed: int, epoch: int) -> None:
        self.batches, self.p, self.modalities = batches, float(p), list(modalities)
        self.generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch) + 7)

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        for feats, labels in self.batches:
            yield self.mask(feats, len(labels)), labels

    def mask(self, feats: dict[str, torch.Tensor], rows: int) -> dict[str, torch.Tensor]:
        dropped = torch.rand(rows, generator=self.generator) < self.p
        which = torch.randint(len(self.modalities), (rows,), generator=self.generator)
        out = dict(feats)
        for i, modality in enumerate(self.modalities):
            out[mask_key(modality)] = dropped & (which == i)
        return out


def with_dropout(batches: Any, p: float, nodes: Sequence[str], seed: int, epoch: int) -> Any:
    """`batches` with modality-dropout masks over the modalities of `nodes` when `p` > 0, else
    `batches` itself."""
    if p <= 0:
        return batches
    return ModalityDropout(batches, p, modalities_of(nodes), seed, epoch)


VAL_MASK_SEED = 2_718_281  # the masks a search scores every candidate under (one set for all)
