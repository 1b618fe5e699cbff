"""The one resume rule of the CLI (search, train, finetune, pretrain): `--resume RUN` continues a run
with its own config.yaml, and only `--device` (and `--accept-changed-store`) may accompany it; and the
one `--accept-changed-store` flag of the commands that check a run's store."""

from __future__ import annotations

import click
from click.core import ParameterSource

from fusion_search.errors import SearchError


def check_resume_options(resume: str) -> None:
    """Refuse every option given with --resume but --device: it would be silently ignored otherwise."""
    ctx = click.get_current_context()
    extra = [p.opts[0] for p in ctx.command.params if p.name not in ("resume", "device", "accept_changed_store")
             and p.opts
             and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE]
    if extra:
        raise SearchError(f"--resume {resume} continues with the run's own config.yaml (only --device may "
                          f"change); drop {', '.join(extra)}")


accept_changed_store_option = click.option(
    "--accept-changed-store", is_flag=True,
    help="Go on when the store is not the one the run or genotype was made from (re-extracted, other "
         "labels, splits or node layers); the run records that it was accepted.")


def given_device() -> str | None:
    """--device when given on the command line (a resumed run may move), else None: the run's own."""
    ctx = click.get_current_context()
    return ctx.params["device"] if ctx.get_parameter_source("device") == ParameterSource.COMMANDLINE else None
