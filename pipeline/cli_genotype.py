"""`bmnas genotype show|render FILE`: read a genotype (format v1) as a tree or a drawing."""

from __future__ import annotations

import click

from fusion_search.genotype import Genotype, check_against_store, show
from fusion_search.render import render


@click.group("genotype")
def genotype() -> None:
    """Inspect genotypes (the JSON `bmnas search` writes)."""


@genotype.command("show")
@click.argument("file", type=click.Path())
@click.option("--store", type=click.Path(), help="Also check that this feature store can feed the genotype.")
def show_cmd(file: str, store: str | None) -> None:
    """Print the genotype as a readable tree."""
    g = Genotype.load(file)
    if store:
        from stores import open_store

        s = open_store(store)
        check_against_store(g, s.nodes, s.task, s.num_classes, source=file)
    click.echo(show(g))
    if store:
        click.echo(f"fits store {store}")


@genotype.command("render")
@click.argument("file", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="OUT.png, OUT.svg or OUT.dot")
@click.option("--engine", type=click.Choice(["auto", "dot", "matplotlib"]), default="auto", show_default=True,
              help="auto: Graphviz `dot` when on PATH, else matplotlib.")
def render_cmd(file: str, output: str, engine: str) -> None:
    """Draw the genotype (inputs -> Cells with their Steps -> head), like the paper's Fig. 3/5."""
    used = render(Genotype.load(file), output, engine)
    click.echo(f"wrote {output} ({used})")


def _attach_baseline() -> None:
    """`genotype baseline` lives with the training commands (it builds the Table 6/7 genotypes)."""
    from pipeline.cli_train import baseline_cmd

    genotype.add_command(baseline_cmd)


_attach_baseline()
