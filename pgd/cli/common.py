"""What every ``pgd`` command shares: MPI started on demand, rank-0 output and file writing, option labels."""

from __future__ import annotations

import json

import click

from pgd.config import command_of, option, option_label, resolve


def get_world():
    """COMM_WORLD, after refusing a launcher/MPI mismatch (MPI starts here, not at import)."""
    from mpi4py import MPI  # noqa: PLC0415 - MPI starts only when a command needs it

    from pgd.runtime.launcher import refuse_singletons  # noqa: PLC0415

    refuse_singletons(MPI.COMM_WORLD)
    return MPI.COMM_WORLD


def echo_rank0(world, text: str) -> None:
    """Print ``text`` on rank 0 only."""
    if world.Get_rank() == 0:
        click.echo(text)


def on_rank0(world, work):
    """Run ``work()`` on rank 0 only (file writers); every rank gets its result or its error."""
    from pgd.comm.host import collectively  # noqa: PLC0415

    result = None
    with collectively(world):
        if world.Get_rank() == 0:
            result = work()
    return world.bcast(result, root=0)


def label(ctx, name: str, value) -> str:
    """``--name`` for messages, saying which environment variable set it if one did."""
    return option_label(resolve(ctx, {name: value}), name, command_of(ctx))


def print_result(world, result: dict, as_json: bool, text: str) -> None:
    """Rank 0 prints ``result`` as JSON or ``text``."""
    echo_rank0(world, json.dumps(result, indent=2, default=str) if as_json else text)


JSON_OPTION = option("--json", "as_json", is_flag=True, show_default=False, help="Print JSON instead of text.")
