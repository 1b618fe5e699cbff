"""The `bmnas` command: a click group with one subcommand (or group) per stage.

User errors (bad paths, bad stores, bad options) become one line on stderr and exit status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import click

from pipeline import __version__
from pipeline.errors import user_errors


class BmnasGroup(click.Group):
    """Click group that reports project errors as one line with exit status 2."""

    def invoke(self, ctx: click.Context):  # noqa: D401 - click API
        try:
            return super().invoke(ctx)
        except user_errors() as exc:  # type: ignore[misc]
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=BmnasGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bmnas")
def cli() -> None:
    """BM-NAS multimodal fusion search on a cache of backbone features."""


def _register() -> None:
    from pipeline.cli_store import store

    cli.add_command(store)
    from pipeline.cli_data import data

    cli.add_command(data)
    from pipeline.cli_extract import backbones_cmd, extract_cmd, pretrain_cmd

    for command in (backbones_cmd, pretrain_cmd, extract_cmd):
        cli.add_command(command)
    from pipeline.cli_search import search_cmd
    from pipeline.cli_genotype import genotype

    cli.add_command(search_cmd)
    cli.add_command(genotype)
    from pipeline.cli_train import ablate_cmd, baseline_cmd, evaluate_cmd, finetune_cmd, report_cmd, train_cmd

    for command in (train_cmd, finetune_cmd, evaluate_cmd, ablate_cmd, report_cmd):
        cli.add_command(command)
    genotype.add_command(baseline_cmd)
    from pipeline.cli_demo import demo_cmd

    cli.add_command(demo_cmd)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="bmnas")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
