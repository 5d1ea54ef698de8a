"""`slotune rules`: Prometheus rules from an SLO spec (the same spec the tuner and load generator use)."""

from __future__ import annotations

from pathlib import Path

import click

from slotune.cli.options import slo_option, writable_dir_option, writable_file_option
from slotune.files import write_output
from slotune.slo import DEFAULT_SLO, SloSpec


@click.command("rules")
@click.option("--slo", "slo_text", default=DEFAULT_SLO, show_default=True, callback=slo_option,
              help="SLO spec, e.g. 'ttft_p95<=500ms,e2e_p95<=2s,error_rate<=1%'")
@click.option("--out", type=click.Path(path_type=Path), callback=writable_file_option,
              help="write the SLO rule file here (default, or '-': stdout)")
@click.option("--write-dir", type=click.Path(path_type=Path), callback=writable_dir_option,
              help="write all rule files (recording, engine alerts, SLO) into this directory, "
                   "e.g. deploy/prometheus/rules")
def rules(slo_text: str, out: Path | None, write_dir: Path | None) -> None:
    """Generate Prometheus rules: per-SLO bad-request ratios and multi-window, multi-burn-rate
    alerts (SRE workbook: 1h/5m 14.4x and 6h/30m 6x page, 1d/2h 3x and 3d/6h 1x ticket)."""
    from slotune import rules as gen
    from slotune.slo_buckets import warnings

    spec = SloSpec.parse(slo_text)
    slo_text_out = gen.render_slo(spec)
    # Said where it is read, not only as a comment in the file: an alert counted against another bound.
    for line in warnings(spec):
        click.echo(f"warning: {line}", err=True)
    groups, notes = gen.slo_rules(spec)
    for note in notes:
        if "no burn-rate alert" in note or note.endswith("omitted"):
            click.echo(f"warning: {note}", err=True)
    if not any(g["rules"] for g in groups if g["name"] == "slo-burn.alerts"):
        click.echo(f"warning: no burn-rate alert for {spec}: no target of it can be alerted on", err=True)
    if write_dir is not None:
        for name, render in gen.RULE_FILES.items():
            text = slo_text_out if render is gen.render_slo else render()
            write_output(write_dir / name, text)
            click.echo(f"wrote {write_dir / name}", err=True)
    if out is not None:
        write_output(out, slo_text_out)  # `-` is stdout, as for every other output option
        if str(out) != "-":
            click.echo(f"wrote {out}", err=True)
    elif write_dir is None:
        click.echo(slo_text_out, nl=False)


def register(app: click.Group) -> None:
    app.add_command(rules)
