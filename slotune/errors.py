"""slotune's own error types. The CLI prints these as one line; the API maps them to 4xx."""


class SlotuneError(Exception):
    """Base class: an expected failure with a message fit for a user."""


class ConfigError(SlotuneError):
    """Bad user input: a flag, a spec, a config file."""


class StoreError(SlotuneError):
    """The database could not be reached or written."""


class TargetError(SlotuneError):
    """A target server could not be reached or answered garbage."""
