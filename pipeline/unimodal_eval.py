"""Test metrics of a pretrained unimodal model (backbone + head), for comparisons with fusion.

A pretraining run keeps its best-on-val weights; this rebuilds the model from the run's
`config.yaml` (`config.json` in older versions' flat layout), loads `best.pt` with the strict key check, and
scores it on a split of the source.
It writes `RUN/metrics_<split>.json` in the flat format the fusion runs use (`accuracy` or
`f1_weighted`, `num_samples`, `num_parameters`), so one table can hold both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader

from extract.backbones import resolve_backbone
from extract.checkpoints import load_checkpoint
from extract.errors import ExtractError
from extract.labelled_samples import LabelledSamples, collate_samples
from fusion_search.training.engine import predict
from fusion_search.training.metrics import PRIMARY, split_metrics
from fusion_search.training.rundir import CONFIG, read_config
from stores.files import write_json_atomic


def evaluate_pretrained(source: Any, run_dir: str | Path, split: str = "test", *, device: str = "cpu",
                        batch_size: int = 32) -> dict[str, Any]:
    """Score the pretrained model in `run_dir` on `split` of `source`; write and return the metrics."""
    run = Path(run_dir)
    cfg_path = next((run / name for name in (CONFIG, "config.json") if (run / name).is_file()), None)
    ckpt = run / "best.pt"
    if cfg_path is None or not ckpt.is_file():
        raise ExtractError(f"{run}: not a finished pretraining run (needs {CONFIG} and best.pt)")
    # a run of the flat layout has config.json (JSON is YAML); every other run config.yaml
    cfg = read_config(run, ExtractError) if cfg_path.name == CONFIG else yaml.safe_load(cfg_path.read_text())
    spec = resolve_backbone(cfg["backbone"], cfg["modality"], cfg.get("tap_choice"))
    inp = spec.input_for(cfg["setting"], cfg.get("input"))
    samples = [s for s in source.samples() if s.split == split]
    if not samples:
        raise ExtractError(f"source {getattr(source, 'name', '?')!r} has no {split!r} samples")
    data = LabelledSamples(source, samples, cfg["modality"], spec, inp, False)
    model = spec.build(cfg["setting"], cfg["num_classes"], cfg["modality"], cfg.get("input_dim"), example=data[0][0])
    load_checkpoint(model, ckpt)
    dev = torch.device(device)
    model.to(dev)
    loader = DataLoader(data, batch_size=batch_size, collate_fn=collate_samples)
    task = cfg["task"]
    scores = split_metrics(task, *predict(model, (b for b in loader if b is not None),
                                          to_device=lambda x, y: (x.to(dev), y.to(dev))))
    metrics = {PRIMARY[task]: scores.get(PRIMARY[task], float("nan")), "loss": scores["loss"],
               "num_samples": len(samples), "num_parameters": sum(p.numel() for p in model.parameters()),
               "split": split, "backbone": cfg["backbone"], "modality": cfg["modality"]}
    write_json_atomic(run / f"metrics_{split}.json", metrics)
    return metrics
