"""`slotune serve`: not yet built."""

import click


def register(app: click.Group) -> None:
    pass
