"""The error every bad input raises (the ground layer: importing it loads nothing else)."""


class ConfigError(ValueError):
    """A configuration problem a user can fix; the message says what and how."""
