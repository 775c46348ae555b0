"""Exceptions that fedhpc raises on purpose, so callers can catch them by kind."""


class FedHPCError(Exception):
    """Base class of fedhpc's own errors."""


class ConfigError(FedHPCError, ValueError):
    """A configuration key or value is invalid; the message names the key."""


class CorruptUpdateError(FedHPCError, ValueError):
    """An encoded update (or its header) is malformed, truncated, oversized,
    inconsistent with what the receiver expects, or fails its checksum."""
