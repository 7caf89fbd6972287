"""Errors caused by bad input (config, data, checkpoints, paths).

`main.py` prints their message alone, without a traceback, and exits with a
non-zero status; anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
  """Bad input; the message says what was wrong and what would be valid."""


class ConfigError(UserError):
  """A config value that cannot work (names the field and valid values)."""


class CheckpointError(UserError):
  """A checkpoint (official `.npz` or a run's orbax checkpoint) that cannot be
  read, restored or used with the model at hand."""
