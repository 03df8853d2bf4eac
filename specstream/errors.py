"""Errors shared by every layer (a leaf module: it imports nothing from specstream)."""


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key, the value and what is allowed."""


class BankError(ValueError):
    """An augmentation bank (noise, babble, RIRs) is missing, empty, unusable or not loaded."""
