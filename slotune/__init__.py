"""slotune: observability and SLO auto-tuning for vLLM."""

__version__ = "0.1.0"
