"""`slotune model tiny DIR`: build the tiny random-weight Llama that the demo and the tests serve."""

from __future__ import annotations

from pathlib import Path

import click

from slotune.errors import ConfigError


@click.group("model")
def model_group() -> None:
    """Build models for trying slotune without downloads."""


@model_group.command("tiny")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True, help="same seed, same model")
@click.option("--force", is_flag=True, help="rebuild even if a complete build is there")
def tiny(out_dir: Path, seed: int, force: bool) -> None:
    """Write a tiny Llama (random weights, locally trained tokenizer) that vLLM can serve."""
    from slotune.model import TinyModelSpec, build_tiny_model

    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} exists and is not a directory")
    click.echo(str(build_tiny_model(out_dir, TinyModelSpec(seed=seed), force=force)))


def register(app: click.Group) -> None:
    app.add_command(model_group)
