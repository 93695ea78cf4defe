"""User-facing errors: the CLI prints these as one line and exits non-zero, no traceback."""


class LMForgeError(Exception):
    """A problem with the user's input, config or files (not a bug in lmforge)."""


class ConfigError(LMForgeError):
    """An invalid configuration value; the message names the field."""


class CheckpointError(LMForgeError):
    """A missing, corrupt or incompatible checkpoint."""


class DataError(LMForgeError):
    """A missing, empty or malformed input file or dataset."""


class DistributedError(LMForgeError):
    """A distributed run lost a rank or could not start (torchrun environment, process group)."""
