"""`bmnas backbones`, `bmnas pretrain` and `bmnas extract`: stage 1 on the command line.

Both stages are plain functions (`pipeline.pretrain.pretrain`, `extract.job.extract`) that the
tests call too; this module only parses options and prints the summary.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import click

from extract.config import ExtractConfig, ReductionConfig
from extract.errors import ExtractError
from extract.sources.registry import KINDS
from pipeline.cli_backbones import backbone_options, input_fields, pairs, tap_list
from pipeline.cli_resume import check_resume_options, given_device
from pipeline.configs import PretrainConfig

_X, _P = ExtractConfig(), PretrainConfig()  # the defaults of `bmnas extract`'s and `pretrain`'s options


def _source_options(values: tuple[str, ...]) -> dict:
    """``--source-opt size=32`` -> {"size": 32}: numbers become ints/floats, the rest stay text."""
    opts: dict = {}
    for key, val in pairs(values, "--source-opt").items():
        try:
            opts[key] = json.loads(val)
        except json.JSONDecodeError:
            opts[key] = val
    return opts


def count_or_auto(text: str) -> int | str:
    """An `N|auto` option's value: a number as int, anything else as given (the stage checks it)."""
    return int(text) if text.isdigit() else text


def _open(data: Path, kind: str | None, split: str | None, source_opt: tuple[str, ...]):
    from extract.sources.registry import open_source

    opts = _source_options(source_opt)
    if split:
        opts["split"] = split
    try:
        return open_source(data, kind, **opts)
    except TypeError as exc:  # an option the adapter does not take
        raise ExtractError(f"--source-opt: {exc}") from None


def _source_args(f, data_required: bool = True):
    f = click.option("--source-opt", multiple=True, metavar="KEY=VALUE",
                     help="Option for the dataset adapter, e.g. size=32 or frames=8 (repeatable).")(f)
    f = click.option("--split", default=None, help="Split preset of the adapter (NTU: mfas, cross-subject, cross-view).")(f)
    f = click.option("--kind", type=click.Choice(KINDS), default=None, help="Dataset kind (detected when omitted).")(f)
    return click.argument("data", type=click.Path(path_type=Path), required=data_required)(f)


@click.command("pretrain")
@functools.partial(_source_args, data_required=False)
@click.option("--modality", help="Modality of the source to train on (video, skeleton, ...).")
@click.option("--backbone", metavar="SPEC",
              help="Backbone spec: a registered name (see `bmnas backbones`), hf:DIR or package.module:callable.")
@click.option("--taps", "taps_text", default=None, metavar="A,B",
              help="Layers to tap (required for a torch module: its head reads the deepest).")
@click.option("--input", "input_text", default=None, metavar="KEY=VALUE,...",
              help="Fields of the prepared input replacing the backbone's default (e.g. size=64,frames=16).")
@click.option("--setting", default=_P.setting, show_default=True, help="Backbone width/depth setting: full or tiny.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="New run directory to write.")
@click.option("--epochs", default=_P.epochs, show_default=True)
@click.option("--batch-size", default=_P.batch_size, show_default=True)
@click.option("--lr", default=_P.lr, show_default=True)
@click.option("--weight-decay", default=_P.weight_decay, show_default=True)
@click.option("--checkpoint", default=None, type=click.Path(path_type=Path), help="Start from this local state_dict.")
@click.option("--inflate-from", default=None, type=click.Path(path_type=Path),
              help="Start inflated_resnet50 from local 2D ResNet-50 weights (e.g. ImageNet resnet50.pth).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=_P.device, show_default=True)
@click.option("--loader-workers", default=_P.num_workers, show_default=True, help="torch DataLoader worker processes.")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default=_P.on_error, show_default=True)
@click.option("--seed", default=_P.seed, show_default=True)
@click.option("--keep-in-memory", is_flag=True,
              help="Keep decoded inputs in RAM after the first epoch (small data sets only).")
@click.option("--resume", type=click.Path(), help="Continue the killed pretraining run in this directory.")
def pretrain_cmd(data, kind, split, source_opt, modality, backbone, taps_text, input_text, setting, out_dir, epochs,
                 batch_size, lr, weight_decay, checkpoint, inflate_from, device, loader_workers, on_error, seed,
                 keep_in_memory, resume) -> None:
    """Train one backbone + head on one modality of DATA; write best.pt and the run directory."""
    from pipeline.pretrain import pretrain, resume_pretrain

    if resume:
        check_resume_options(resume)
        res = resume_pretrain(resume, device=given_device())
    else:
        for name, value in (("DATA", data), ("--modality", modality), ("--backbone", backbone), ("--out", out_dir)):
            if not value:
                raise ExtractError(f"{name}: required (or --resume RUN to continue a run)")
        src = _open(data, kind, split, source_opt)
        where = {"path": str(Path(data).resolve()), "kind": kind, "split": split,
                 "options": _source_options(source_opt)}
        res = pretrain(src, modality, backbone, str(out_dir), setting=setting, epochs=epochs, batch_size=batch_size,
                       lr=lr, weight_decay=weight_decay, device=device,
                       init_checkpoint=str(checkpoint) if checkpoint else None,
                       inflate_from=str(inflate_from) if inflate_from else None, num_workers=loader_workers,
                       on_error=on_error, seed=seed, keep_in_memory=keep_in_memory, source_location=where,
                       tap_choice=tap_list(taps_text or "") or None,
                       input=input_fields(input_text) if input_text else {})
    from fusion_search.training.distributed import launched_rank

    if launched_rank():  # under torchrun, rank 0 reports for all
        return
    click.echo(f"best {res.metric} {res.best_score:.4f} at epoch {res.best_epoch}; checkpoint {res.checkpoint} "
               f"(sha256 {res.checkpoint_sha256[:12]})")


@click.command("extract")
@_source_args
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Feature store to write (NAME.zarr).")
@click.option("--backbone", "backbone_opts", multiple=True, required=True, metavar="MODALITY=SPEC",
              help="Backbone per modality: a registered name (video=inflated_resnet50), hf:DIR (a Hugging Face "
                   "save_pretrained directory) or package.module:callable (a torch module); repeatable, one store.")
@click.option("--checkpoint", "checkpoint_opts", multiple=True, metavar="MODALITY=PATH",
              help="Local state_dict per modality (.pt/.pth/.safetensors); sha256 goes into the store.")
@click.option("--inflate-from", default=None, type=click.Path(path_type=Path),
              help="Local 2D ResNet-50 weights (e.g. ImageNet resnet50.pth) to centre-inflate into the "
                   "inflated_resnet50 backbone of this run.")
@click.option("--taps", "tap_opts", multiple=True, metavar="MODALITY=A,B",
              help="Taps per modality, shallow to deep (default: the backbone's default taps; hf: hidden-state "
                   "indices; required for a torch module).")
@click.option("--input", "input_opts", multiple=True, metavar="MODALITY=KEY=VALUE,...",
              help="Fields of a modality's prepared input (frames, size, channels, tokens, mean=A:B:C, std=A:B:C).")
@click.option("--setting", default="full", show_default=True, help="Backbone width/depth setting: full or tiny.")
@click.option("--rows-per-chunk", default=_X.rows_per_chunk, show_default=True)
@click.option("--chunks-per-task", default=_X.chunks_per_task, show_default=True, help="Row chunks per dask task.")
@click.option("--batch-size", default=_X.batch_size, show_default=True, help="Samples per forward pass.")
@click.option("--dtype", type=click.Choice(["auto", "float16", "float32"]), default=_X.dtype, show_default=True,
              help="Store dtype; auto: float16 for each node whose probe values stay below 1/8 of its range, "
                   "else float32.")
@click.option("--codec", type=click.Choice(["zstd", "lz4"]), default=_X.codec, show_default=True)
@click.option("--t-max", default=_X.reduction.t_max, show_default=True, help="Cap on the cached length of video/skeleton taps.")
@click.option("--grid", default=_X.reduction.grid, show_default=True, help="Image taps: adaptive max to GRID x GRID.")
@click.option("--workers", default=_X.workers, show_default=True, help="LocalCluster worker processes.")
@click.option("--threads-per-worker", default=_X.threads_per_worker, show_default=True)
@click.option("--decode-threads", default=str(_X.decode_threads), show_default=True, metavar="N|auto",
              help="Per worker: threads reading and decoding a batch's samples in parallel; auto: a GPU "
                   "worker's share of its host's cores, 1 on a CPU worker.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Use an existing dask scheduler (tcp://host:8786); the store must be on shared storage.")
@click.option("--no-dask", is_flag=True, help="Run in this process, without dask.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=_X.device, show_default=True,
              help="Checked on the workers; each worker of a host takes its own GPU.")
@click.option("--precision", type=click.Choice(["auto", "float32", "float16"]), default=_X.precision, show_default=True,
              help="Compute precision of the forward (float16: autocast); auto: float16 on CUDA when every "
                   "node is stored in float16, else float32. Recorded in the store; a resume must match.")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default=_X.on_error, show_default=True,
              help="Unreadable sample: stop (fail) or record it and drop it from the splits (skip).")
@click.option("--overwrite", is_flag=True, help="Replace a bmnas store made with other settings (never another folder).")
@click.option("--timeout", default=_X.timeout, show_default=True, help="Seconds to wait for --scheduler.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def extract_cmd(data, kind, split, source_opt, out, backbone_opts, checkpoint_opts, inflate_from, tap_opts, input_opts,
                setting,
                rows_per_chunk, chunks_per_task, batch_size, dtype, codec, t_max, grid, workers,
                threads_per_worker, decode_threads, scheduler, no_dask, device, precision, on_error, overwrite,
                timeout, quiet) -> None:
    """Run frozen backbones over DATA and write their reduced taps to the store OUT (resumable)."""
    from extract.job import BackboneChoice, extract

    chosen = backbone_options(backbone_opts, checkpoint_opts, tap_opts, input_opts)
    if inflate_from:
        targets = [m for m, b in chosen.items() if b["backbone"] == "inflated_resnet50"]
        if len(targets) != 1 or chosen[targets[0]]["checkpoint"]:
            raise ExtractError("--inflate-from needs exactly one --backbone MODALITY=inflated_resnet50 "
                               "without its own --checkpoint")
        chosen[targets[0]]["checkpoint"] = str(inflate_from)
    choices = [BackboneChoice(m, b["backbone"], setting, b["checkpoint"], b["taps"],
                              inflate=bool(inflate_from) and b["backbone"] == "inflated_resnet50",
                              input=tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                                 for k, v in (b["input"] or {}).items())))
               for m, b in chosen.items()]
    src = _open(data, kind, split, source_opt)
    cfg = ExtractConfig(reduction=ReductionConfig(t_max=t_max, grid=grid), dtype=dtype, rows_per_chunk=rows_per_chunk,
                        chunks_per_task=chunks_per_task, codec=codec, batch_size=batch_size, use_dask=not no_dask,
                        scheduler=scheduler, workers=workers, threads_per_worker=threads_per_worker,
                        decode_threads=count_or_auto(decode_threads), device=device,
                        precision=precision, on_error=on_error, overwrite=overwrite, progress=not quiet,
                        timeout=timeout)
    res = extract(src, str(out), choices, cfg)
    click.echo(res.summary())
    for node, (c, t) in res.nodes.items():
        click.echo(f"  {node:<14} C={c:<5} T={t:<4} {res.dtypes.get(node, '')}")
    for s in res.skipped:
        click.echo(f"  skipped {s['id']} ({s['path']}): {s['reason']}")
