"""`slotune serve`: run a managed vLLM server in the foreground until Ctrl-C (or print its command)."""

from __future__ import annotations

import time
from pathlib import Path

import click

from slotune import paths
from slotune.cli.options import model_option, vllm_config_from


@click.command("serve")
@click.option("--model", callback=model_option,
              help="model directory (must exist) or Hugging Face id ORG/NAME (or `model:` in --config)")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML file of vLLM flags")
@click.option("--port", type=click.IntRange(1, 65535), help="port (default: a free one)")
@click.option("--host", default=None, help="address to bind (default 127.0.0.1)")
@click.option("--print-command", is_flag=True, help="only print the `vllm serve` line (checked as a launch is) and exit")
@click.option("--startup-timeout", type=float, default=300.0, show_default=True)
def serve(model, config_file, port, host, print_command, startup_timeout) -> None:  # type: ignore[no-untyped-def]
    """Start vLLM with slotune's lifecycle (health wait, failure classes, no orphans)."""
    from slotune.server import ManagedServer, ServerStartError, stop_on_signals

    cfg = vllm_config_from(model, config_file, {"port": port, "host": host})
    server = ManagedServer(cfg, log_dir=paths.logs_dir(), startup_timeout=startup_timeout)
    if print_command:
        click.echo(server.launch_config().serve_command())
        return
    stop_on_signals()
    result = server.start()
    if not result.ok:
        raise ServerStartError(result)
    click.echo(f"vLLM ready at {server.base_url} (log: {result.log_path}); Ctrl-C stops it", err=True)
    try:
        while server.is_running():
            time.sleep(1)
        click.echo("vLLM exited", err=True)
    finally:
        server.stop()


def register(app: click.Group) -> None:
    app.add_command(serve)
