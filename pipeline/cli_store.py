"""`bmnas store info|verify PATH`: inspect and check a feature store."""

from __future__ import annotations

import json
import sys

import click

from stores import store_info, verify_store


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


@click.group()
def store() -> None:
    """Inspect and verify feature stores (zarr, format v1)."""


@store.command("info")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info_cmd(path: str, as_json: bool) -> None:
    """Summarise a store: task, classes, nodes, shapes, bytes, compression, splits, completeness;
    exit 1 when it lists problems (as `store verify`)."""
    info = store_info(path)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        sys.exit(1 if info["problems"] else 0)
    click.echo(f"store     {info['path']}  ({info['format']} v{info['version']})")
    click.echo(f"task      {info['task']}, {info['num_classes']} classes, {info['num_samples']} samples"
               + (f", dataset {info['dataset']}" if info["dataset"] else ""))
    click.echo("splits    " + ", ".join(f"{k} {v}" for k, v in info["splits"].items()))
    ratio = info["compression_ratio"]
    click.echo(f"size      {_human(info['bytes_on_disk'])} on disk, {_human(info['bytes_raw'])} raw"
               + (f", compression {ratio:.2f}x" if ratio else ""))
    done = info["chunks_complete"]
    click.echo("complete  " + ("yes (no completion records: written outside extraction)" if done is None
                               else f"{done[0]}/{done[1]} row chunks"
                               + ("" if done[0] == done[1] else "  -- INCOMPLETE: resume the extraction")))
    if info["skipped"]:
        click.echo(f"skipped   {info['skipped']} samples (see attrs['bmnas']['skipped'])")
    click.echo("nodes")
    for n in info["nodes"]:
        c, t = n["shape"]
        click.echo(f"  {n['name']:<16} C={c:<6} T={t:<4} {n['dtype']:<8} {_human(n['bytes_on_disk']):>10}")
    for p in info["problems"]:
        click.echo(f"problem   {p}")
    if info["problems"]:
        sys.exit(1)


@store.command("verify")
@click.argument("path", type=click.Path())
def verify_cmd(path: str) -> None:
    """Check every format rule and scan for NaN/Inf; exit 0 when sound, 1 with one line per problem."""
    problems = verify_store(path)
    for p in problems:
        click.echo(f"{path}: {p}")
    if problems:
        sys.exit(1)
    click.echo(f"{path}: ok")
