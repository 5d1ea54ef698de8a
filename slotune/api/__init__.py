"""The sidecar's HTTP API (FastAPI): health, Prometheus metrics, reads of what the store holds,
token-protected writes, and the Alertmanager webhook. The app is built around a `SidecarService`
protocol (see `slotune.api.service`), so this package never imports the sidecar's internals."""
