"""Errors that reach the user as one line: what is wrong and what to do."""


class VaekitError(Exception):
    """A problem with the user's input (config, data, paths); the CLI prints it without a traceback."""


class ConfigError(VaekitError):
    """An unknown key, a value of the wrong type, or an unknown registry name."""


class TrainingDiverged(VaekitError):
    """The loss stayed non-finite for too many consecutive steps."""
