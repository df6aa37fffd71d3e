"""Exceptions shown to users: each message names the file or key at fault and what to do about it."""


class SdrError(Exception):
    """Base class for the errors this project raises on purpose."""


class DataError(SdrError):
    """Missing, corrupt or inconsistent data (clips, metadata, archives, splits)."""


class ConfigError(SdrError):
    """A configuration value that cannot work."""


class OutputError(SdrError):
    """A result could not be written (a full disk, a read-only folder); what was written before is kept."""
