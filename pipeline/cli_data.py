"""`bmnas data`: write synthetic datasets, summarise any dataset a source can read, and prepare one for
repeated extraction."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

import click

from extract.prepare import ON_ERROR, prepared_record
from extract.sources.registry import KINDS, open_source
from extract.synth import KINDS as SYNTH_KINDS
from pipeline.cli_extract import _open, _source_args, _source_options, count_or_auto


@click.group()
def data() -> None:
    """Raw datasets: synthetic generators, dataset summaries, one-off preparation."""


@data.command()
@click.argument("kind", type=click.Choice(SYNTH_KINDS))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--samples", "-n", default=1000, show_default=True, help="Number of samples.")
@click.option("--classes", "-k", default=None, type=int, help="Classes (ntu-like: even, default 8; mmimdb-like: 23 genres).")
@click.option("--seed", default=0, show_default=True)
def synth(kind: str, out: Path, samples: int, classes: int | None, seed: int) -> None:
    """Write a synthetic KIND dataset to OUT in the real dataset's on-disk format."""
    from extract.synth import generate

    t0 = time.perf_counter()
    meta = generate(kind, out, samples=samples, classes=classes, seed=seed)
    click.echo(f"wrote {samples} {kind} samples, {meta['num_classes']} classes to {out} "
               f"in {time.perf_counter() - t0:.1f}s")
    for name, value in meta.get("ceilings", {}).items():
        click.echo(f"  ceiling {name:<20} {value:.3f}")


@data.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(KINDS), default=None, help="Dataset kind (detected when omitted).")
@click.option("--split", "split_preset", default=None, help="NTU split preset: mfas, cross-subject, cross-view.")
@click.option("--check/--no-check", default=False, show_default=True,
              help="Also decode every sample's every modality and list all failures.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(path: Path, kind: str | None, split_preset: str | None, check: bool, as_json: bool) -> None:
    """Summarise the dataset at PATH: samples per split, classes, modalities, problems (exit 1 when any)."""
    options = {"split": split_preset} if split_preset else {}
    src = open_source(path, kind, lenient=True, **options)
    samples = src.samples()
    problems = src.problems()
    if check:
        problems += src.check(samples, progress=True)
    summary = {
        "path": str(path),
        "source": src.name,
        "task": src.task,
        "num_classes": src.num_classes,
        "modalities": list(src.modalities),
        "samples": len(samples),
        "splits": dict(sorted(Counter(s.split for s in samples).items())),
        "problems": problems,
    }
    prepared = prepared_record(path)
    if prepared:
        summary["prepared"] = prepared
    meta = getattr(src, "metadata", None)
    if meta and "ceilings" in meta:
        summary["synthetic"] = {"kind": meta.get("kind"), "ceilings": meta["ceilings"]}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        sys.exit(1 if problems else 0)
    click.echo(f"{path}: {src.name}, {src.task}, {src.num_classes} classes, modalities {', '.join(src.modalities)}")
    click.echo(f"samples: {len(samples)} ({', '.join(f'{k} {v}' for k, v in summary['splits'].items())})")
    if "synthetic" in summary:
        ceilings = ", ".join(f"{k} {v:.3f}" for k, v in meta["ceilings"].items())
        click.echo(f"synthetic {meta.get('kind')}: ceilings {ceilings}")
    if prepared:
        options = ", ".join(f"{k} {v}" for k, v in prepared["settings"]["options"].items())
        click.echo(f"prepared by bmnas data prepare from a {prepared['settings']['source']} source "
                   f"({prepared['location'].get('path', '?')}; {options})"
                   + ("" if prepared.get("complete") else "; UNFINISHED: rerun that command to complete it"))
    click.echo(f"problems: {len(problems)}" + ("" if check else " (listing only; --check decodes every sample)"))
    for line in problems:
        click.echo(f"  {line}")
    if problems:
        sys.exit(1)  # as `store verify`: a script can tell a dataset with problems


@data.command()
@_source_args
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--workers", default="auto", show_default=True, metavar="N|auto",
              help="Processes decoding in parallel; auto: one per core.")
@click.option("--on-error", type=click.Choice(ON_ERROR), default="fail", show_default=True,
              help="fail: stop at the first unreadable sample (what is saved stays); skip: leave it out and list it.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def prepare(data: Path, kind: str | None, split: str | None, source_opt: tuple[str, ...], out: Path, workers: str,
            on_error: str, quiet: bool) -> None:
    """Decode DATA once into OUT as the source reads it (a manifest dataset of .npy files) for faster reruns."""
    from extract.prepare import prepare_dataset

    src = _open(data, kind, split, source_opt)
    where = {"path": str(Path(data).resolve()), "kind": kind, "split": split,
             "options": _source_options(source_opt)}
    res = prepare_dataset(src, out, location=where, workers=count_or_auto(workers),
                          on_error=on_error, progress=not quiet)
    if res.complete_before:
        click.echo(f"{out}: already prepared ({res.reused} samples); nothing to do")
        return
    size = sum(p.stat().st_size for p in Path(out).rglob("*.npy"))
    click.echo(f"prepared {res.written} samples into {out} in {res.seconds:.1f}s, {size / 1e6:.1f} MB on disk"
               + (f" ({res.reused} saved by an earlier run)" if res.reused else ""))
    for sid, why in res.skipped.items():
        click.echo(f"  skipped {sid}: {why}")
    click.echo(f"a manifest dataset: bmnas extract {out} --out FEATURES.zarr --backbone ...")
