"""`slotune sidecar --config FILE`: the control loop and its API in one process."""

from __future__ import annotations

import logging
import signal
import socket
from pathlib import Path

import click

from slotune.errors import ConfigError


def register(app: click.Group) -> None:
    @app.command()
    @click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
                  help="YAML settings file (environment variables SLOTUNE_* override it).")
    @click.option("--target", default=None, help="vLLM base URL to watch (overrides the file).")
    @click.option("--host", default=None, help="address the API listens on.")
    @click.option("--port", type=int, default=None, help="port the API listens on (default 8080).")
    @click.option("--mode", type=click.Choice(["observe", "recommend", "apply"]), default=None)
    def sidecar(config_file: Path | None, target: str | None, host: str | None, port: int | None,
                mode: str | None) -> None:
        """Watch a vLLM server: scrape, evaluate SLOs, diagnose, notify, recommend or apply configs."""
        import uvicorn

        from slotune.api import app as api
        from slotune.sidecar import config, runtime
        overrides = {k: v for k, v in {"target": target, "host": host, "port": port, "mode": mode}.items()
                     if v is not None}
        settings = config.load_settings(config_file, **overrides)
        logging.basicConfig(level=settings.log_level.upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        sock = listen(settings.host, settings.port)  # before the loop starts: a busy port is one line
        service = runtime.Sidecar(settings)
        service.start()
        try:
            server = uvicorn.Server(uvicorn.Config(api.create_app(service), host=settings.host, port=settings.port,
                                                   log_level=settings.log_level, access_log=False,
                                                   lifespan="off", timeout_graceful_shutdown=5))
            # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler installed
            # before it: make that a no-op, so the `finally` below stops the loop and the managed
            # server, and the exit status is 0.
            signal.signal(signal.SIGTERM, lambda *_: None)
            server.run(sockets=[sock])
        finally:
            service.stop()
            sock.close()


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port. Raises `ConfigError` (one line) when the address cannot
    be resolved or bound (in use, no permission), instead of uvicorn's log line and exit status 3."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
