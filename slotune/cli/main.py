"""`slotune`: a thin CLI. Each command module turns flags into a validated model and calls one entry
point; this module only assembles them and turns expected errors into one-line messages."""

from __future__ import annotations

import importlib
import sys

import click

from slotune import __version__
from slotune.errors import SlotuneError


@click.group(name="slotune", context_settings={"help_option_names": ["-h", "--help"]})
def app() -> None:
    """Observability and SLO auto-tuning for vLLM."""


@app.command()
def version() -> None:
    """Print slotune's version (and the vLLM build it drives, if installed)."""
    from slotune import platforms

    plat = platforms.detect()
    vllm = f"{plat.distribution} {plat.version}" if plat.version else "vLLM not installed"
    click.echo(f"slotune {__version__} ({vllm}, backend {plat.backend})")


# Each module has `register(app)`; a module per command keeps imports light and owners clear.
COMMAND_MODULES = (
    "slotune.cli.model",
    "slotune.cli.serve",
    "slotune.cli.collect",
    "slotune.cli.bench",
    "slotune.cli.diagnose",
    "slotune.cli.tune",
    "slotune.cli.sidecar",
    "slotune.cli.rules",
    "slotune.cli.dashboards",
    "slotune.cli.demo",
)
for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; expected errors become `error: ...` on one line and a non-zero exit."""
    try:
        rv = app.main(args=argv, prog_name="slotune", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `slotune` or a bare group: show help
            click.echo(exc.ctx.get_help() if exc.ctx else "")
            return 0
        path = exc.ctx.command_path if exc.ctx else "slotune"
        print(f"error: {exc.format_message()} (see '{path} --help')", file=sys.stderr)
        return 2
    except click.ClickException as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    except SlotuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, click.exceptions.Abort):
        print("interrupted", file=sys.stderr)
        return 130
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
