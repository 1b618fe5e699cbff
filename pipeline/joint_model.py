"""The joint model of `bmnas finetune`: backbones + taps + reduction + the found fusion network as one
differentiable model, the raw samples it reads, and the finetune run's config.

The model is exactly the cache pipeline made differentiable: each backbone runs on its modality, the
taps the genotype reads are hooked and reduced by the same parameter-free `extract.reduction` the
cache used, and the `FoundNetwork` of the genotype fuses them. Node `<modality>_<k>` is the k-th tap
(shallow to deep) of that modality's backbone, as in extraction. Backbone heads are dropped (the
cache never holds their logits). Samples are read and prepared (`extract.backbones.prepare_one`, decord for
video) in torch DataLoader workers. `finetune` trains it; `evaluate` scores a finetune run with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from extract.backbones import BackboneSpec, get_module, resolve_backbone
from extract.checkpoints import inflate_checkpoint, load_checkpoint, sha256_weights
from extract.errors import ExtractError
from extract.reduction import ReductionConfig, reduce_tap
from extract.worker import INIT_SEED
from extract.sources.registry import open_source
from fusion_search.errors import SearchError
from fusion_search.found_network import FoundNetwork
from fusion_search.genotype import Genotype
from fusion_search.missing import MISSING
from fusion_search.training.distributed import SINGLE, World, die_with_parent
from pipeline.configs import FinetuneConfig
from pipeline.runs import read_run_config

_NODE = re.compile(r"^(?P<modality>.+)_(?P<k>\d+)$")


def backbones_from_store(store: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The backbones (spec, setting, checkpoint path and sha256, taps, input) and the reduction a store
    was extracted with, from its provenance record."""
    prov = store.attrs.get("extraction") or {}
    if not prov.get("backbones"):
        raise SearchError(f"--store {store.path}: it records no extraction (written by hand?); give "
                          "--backbone MODALITY=SPEC --checkpoint MODALITY=PATH, --taps and --setting instead")
    keep = ("modality", "backbone", "setting", "checkpoint", "checkpoint_sha256", "taps", "input", "inflate")
    return [{k: b.get(k) for k in keep} for b in prov["backbones"]], dict(prov.get("reduction") or {})


def check_checkpoint_hash(b: dict[str, Any], spec: BackboneSpec) -> None:
    """Weights whose bytes differ from the ones the store was extracted with are refused: the
    checkpoint file, or the weights an hf: directory (or a shipped backbone) holds."""
    want, path = b.get("checkpoint_sha256"), b.get("checkpoint")
    if not path and spec.weights is not None:
        path = spec.weights()
    if want and path:
        if not Path(path).is_file():
            raise SearchError(f"checkpoint {path} of {b['modality']} (recorded in the store) does not exist; "
                              f"give --checkpoint {b['modality']}=PATH")
        got = sha256_weights(path)
        if got != want:
            raise SearchError(f"checkpoint {path} of {b['modality']} has sha256 {got[:12]}, the store was "
                              f"extracted with {want[:12]}: give the file the store was made from")


def _node_taps(genotype: Genotype) -> dict[str, list[tuple[str, int]]]:
    """modality -> [(node, k)] of the nodes the genotype reads."""
    out: dict[str, list[tuple[str, int]]] = {}
    for node in genotype.used_nodes():
        m = _NODE.match(node)
        if not m:
            raise SearchError(f"genotype node {node!r} is not named <modality>_<k>; "
                              "finetune maps nodes to backbone taps by that name")
        out.setdefault(m["modality"], []).append((node, int(m["k"])))
    return out


class _TapsTaken(Exception):
    """Raised by the hook of the last tap a forward needs: the backbone stops there."""


class _GradTaps:
    """Forward hooks that reduce the chosen taps on the fly and keep them in the autograd graph.

    HCN runs each body as its own row; such outputs are folded back by max over those rows, the
    merge extraction applies (`extract.backbones.taps.TapReader`), so features match the cache.
    Once every chosen tap is taken the forward stops (`_TapsTaken`): the layers after the deepest
    tap the genotype reads cost no time and take no part in training.
    """

    def __init__(self, model: nn.Module, taps: Sequence[tuple[str, Any]], reduction) -> None:
        self.reduction = reduction
        self.out: dict[str, torch.Tensor] = {}
        self.rows = 0
        self.count = len(taps)
        for node, tap in taps:
            get_module(model, tap.module).register_forward_hook(self._hook(node, tap.kind))

    def _hook(self, node: str, kind: str):
        def hook(_mod, _inp, out):
            if isinstance(out, (tuple, list)):
                out = out[0]
            if out.shape[0] != self.rows:
                out = out.reshape(self.rows, -1, *out.shape[1:]).amax(dim=1)
            self.out[node] = reduce_tap(out, kind, self.reduction).float()
            if len(self.out) == self.count:
                raise _TapsTaken
        return hook


class JointModel(nn.Module):
    """Backbones (heads removed) -> hooked, reduced taps -> FoundNetwork, differentiable end to end."""

    def __init__(self, backbones: dict[str, nn.Module], taps: dict[str, list[tuple[str, Any]]], reduction,
                 freeze_bn: bool = True) -> None:
        super().__init__()
        self.backbones = nn.ModuleDict(backbones)
        self.freeze_bn = freeze_bn
        self._taps = {m: _GradTaps(bb, taps[m], reduction) for m, bb in backbones.items()}
        self.fusion: FoundNetwork | None = None

    def features(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feats: dict[str, torch.Tensor] = {}
        for m, bb in self.backbones.items():
            hooks = self._taps[m]
            hooks.out, hooks.rows = {}, inputs[m].shape[0]
            try:
                bb(inputs[m])
            except _TapsTaken:
                pass
            feats.update(hooks.out)
            hooks.out = {}
        return feats

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits; missing-modality masks among `inputs` go on to the fusion network (`fusion_search.missing`)."""
        assert self.fusion is not None
        feats = self.features(inputs)
        feats.update({k: v for k, v in inputs.items() if k.startswith(MISSING)})
        return self.fusion(feats)

    def train(self, mode: bool = True) -> "JointModel":
        super().train(mode)
        if mode and self.freeze_bn:
            for mod in self.backbones.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    mod.eval()
        return self

    def freeze_unreached(self, example: dict[str, torch.Tensor]) -> int:
        """Stop training the backbone parameters no chosen tap depends on (the layers after the deepest
        one, branches that feed none): they get no gradient, which DistributedDataParallel refuses.
        Found by one backward of the taps on `example`; returns how many tensors were frozen."""
        was = self.training
        self.eval()
        feats = self.features(example)
        torch.stack([t.float().sum() for t in feats.values()]).sum().backward()
        frozen = 0
        for p in self.backbones.parameters():
            if p.requires_grad and p.grad is None:
                p.requires_grad_(False)
                frozen += 1
            p.grad = None
        self.train(was)
        return frozen

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        assert self.fusion is not None
        return ([p for p in self.backbones.parameters() if p.requires_grad],
                [p for p in self.fusion.parameters() if p.requires_grad])


class RawSamples(Dataset):
    """(prepared inputs per modality, label) of listed samples; read in DataLoader workers."""

    def __init__(self, source: Any, samples: list, specs: dict[str, tuple[Any, Any]]) -> None:
        self.source, self.samples, self.specs = source, samples, specs  # modality -> (backbone spec, input)
        self.labels = source.label_array(samples)
        self.multilabel = source.task == "multilabel"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        sid = self.samples[i].id
        x = {m: spec.prepare_input(self.source.read(sid, m), m, inp) for m, (spec, inp) in self.specs.items()}
        y = torch.as_tensor(self.labels[i])
        return x, (y.float() if self.multilabel else y.long())


@dataclass
class Built:
    """A joint model ready to run, and what it reads."""

    model: JointModel
    source: Any
    specs: dict[str, Any]
    node_shapes: dict[str, tuple[int, int]]


def open_finetune_source(cfg: FinetuneConfig):
    opts = dict(cfg.source_opts)
    if cfg.source_split:
        opts["split"] = cfg.source_split
    try:
        return open_source(cfg.source, cfg.source_kind, **opts)
    except TypeError as exc:
        raise ExtractError(f"--source-opt: {exc}") from None


def build_model(cfg: FinetuneConfig, genotype: Genotype, *, load_checkpoints: bool = True) -> Built:
    """Open the source, build each needed backbone (checkpoint loaded strictly), probe tap shapes, add fusion."""
    source = open_finetune_source(cfg)
    if genotype.task != source.task or genotype.num_classes != source.num_classes:
        raise SearchError(f"genotype {cfg.genotype} was found for {genotype.task} with {genotype.num_classes} classes; "
                          f"the source {cfg.source} is {source.task} with {source.num_classes} classes")
    wanted = _node_taps(genotype)
    chosen = {b["modality"]: b for b in cfg.backbones}
    missing = sorted(set(wanted) - set(chosen))
    if missing:
        raise SearchError(f"the genotype reads {', '.join(n for m in missing for n, _ in wanted[m])}: "
                          f"give --backbone {missing[0]}=SPEC --checkpoint {missing[0]}=PATH")
    samples = source.samples()
    if not samples:
        raise SearchError(f"source {cfg.source} lists no samples")
    reduction = ReductionConfig(t_max=cfg.t_max, grid=cfg.grid)
    backbones, taps, specs = {}, {}, {}
    probe_ids = [s.id for s in samples[:1]]
    for mod in wanted:  # only the modalities the genotype reads
        b = chosen[mod]
        setting = b.get("setting") or cfg.setting
        spec = resolve_backbone(b["backbone"], mod, b.get("taps"))
        tap_specs = spec.tap_specs(setting, b.get("taps"))
        for node, k in wanted[mod]:
            if k > len(tap_specs):
                raise SearchError(f"genotype node {node} is tap {k} of {mod}, but {b['backbone']} "
                                  f"({setting}) has {len(tap_specs)} taps: "
                                  f"{', '.join(t.name for t in tap_specs)}")
        inp = spec.input_for(setting, b.get("input"))
        item = spec.prepare_input(source.read(probe_ids[0], mod), mod, inp)
        model = spec.build(setting, source.num_classes, mod, int(item.shape[-1]) if mod == "text" else None,
                           seed=INIT_SEED, example=item)  # a backbone extracted without a checkpoint: the same one
        if load_checkpoints:
            check_checkpoint_hash(b, spec)
            if b.get("checkpoint"):
                load = inflate_checkpoint if b.get("inflate") else load_checkpoint
                load(model, b["checkpoint"], head=spec.head)
        parent, _, leaf = spec.head.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, nn.Identity())
        backbones[mod] = model
        taps[mod] = [(node, tap_specs[k - 1]) for node, k in wanted[mod]]
        specs[mod] = (spec, inp)
    joint = JointModel(backbones, taps, reduction, cfg.freeze_bn)
    shapes = _tap_shapes(joint, {m: t[None] for m, t in RawSamples(source, samples[:1], specs)[0][0].items()})
    joint.fusion = FoundNetwork(genotype, shapes, cfg.dropout, cfg.modality_dropout > 0)
    return Built(joint, source, specs, shapes)


def _tap_shapes(joint: JointModel, probe: dict[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """Each node's (channels, length) on one sample; the backbones' unreached parameters frozen on the way."""
    joint.freeze_unreached(probe)
    joint.eval()
    with torch.no_grad():
        feats = joint.features(probe)
    return {n: (int(t.shape[1]), int(t.shape[2])) for n, t in feats.items()}


def raw_loader(built: Built, split_names: Sequence[str], cfg: FinetuneConfig, device: torch.device,
               world: World = SINGLE, *, shuffle: bool, epoch: int = 0, batch_size: int | None = None) -> DataLoader:
    """This rank's share of the split, in batches of its share of the global `batch_size`.

    The order is a seeded permutation per epoch (torch's DistributedSampler: rank r reads every
    size-th sample of it, the split padded to a multiple of the ranks), so one process reads the
    permutation in order and N processes the same global batches. Pinned host memory only for a CUDA
    run: pinning creates a CUDA context (and holds GPU memory)."""
    samples = [s for s in built.source.samples() if s.split in split_names]
    if not samples:
        raise SearchError(f"source {cfg.source} has no samples in split(s) {', '.join(split_names)}")
    ds = RawSamples(built.source, samples, built.specs)
    sampler = DistributedSampler(ds, num_replicas=world.size, rank=world.rank, shuffle=shuffle,
                                 seed=cfg.seed * 100_003)
    sampler.set_epoch(epoch)
    return DataLoader(ds, batch_size=world.check_batch(batch_size or cfg.batch_size), sampler=sampler,
                      num_workers=cfg.loader_workers, pin_memory=device.type == "cuda", worker_init_fn=die_with_parent)


def to_device(x: dict[str, torch.Tensor], y: torch.Tensor,
              device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A raw batch on `device` (non-blocking: the loader pins host memory for CUDA)."""
    return {m: t.to(device, non_blocking=True) for m, t in x.items()}, y.to(device, non_blocking=True)


def load_finetune_config(run: Path) -> FinetuneConfig:
    """The config of a finetune run directory (a train run is refused with the command to use)."""
    data = read_run_config(run)
    if data["kind"] != "finetune":
        raise SearchError(f"{run}: a train run; resume it with `bmnas train --resume {run}`")
    return FinetuneConfig(**data)
