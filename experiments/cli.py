"""A study's command line: options as one dataclass, as --flags and back.

Each field of a study's `StudyOptions` subclass, made by `option`, is a
flag of its command (`define_flags`, `options_from_flags`), so that a test
builds the same options in Python that a user gives on the command line,
and `options_command` writes the options back as the command that a report
says it was made by, every flag spelt out.
"""

import copy
import dataclasses
import shlex
import typing
from typing import Any, Optional, Sequence

from absl import flags
import ml_collections

from vit_flax import errors
from vit_flax.data import idx

# Flags that `define_flags` defines belong to the calling study, so that its
# --help lists them.
flags.disclaim_key_flags()


def option(default: Any, help_text: str) -> Any:
  """A field of a study's options: its default and its --flag's help."""
  return dataclasses.field(default=default, metadata={'help': help_text})


def out_option(default: str) -> Any:
  """The --out field: where the study writes its report."""
  return option(default, 'Output path without extension: writes OUT.md, '
                'OUT.png.')


def workdir_option(default: str) -> Any:
  """The --workdir field: where the study's runs write their metrics."""
  return option(default, "Root of the runs' workdirs (TensorBoard metrics); "
                'its run folders are replaced.')


def train_eval_split_option() -> Any:
  """The --train_eval_split field: training examples evaluated after
  training, whose accuracy shows overfitting beside the test accuracy."""
  return option('train[:10000]', 'Training examples whose accuracy, after '
                'training, is compared with the test accuracy.')


@dataclasses.dataclass(frozen=True)
class StudyOptions:
  """Options every study takes; a study's own options extend these.

  A study's options also have `out` and `workdir` (`out_option`,
  `workdir_option`), whose defaults name the study.
  """

  num_evals: int = option(4, 'Test-set evaluations per run (the last at '
                          'the end).')
  fashion_mnist_dir: Optional[str] = option(
      None, "Folder of Fashion-MNIST's four IDX files (default: "
      f'{idx.FASHION_MNIST_DIR}).')

  def with_data(self, config: ml_collections.ConfigDict
                ) -> ml_collections.ConfigDict:
    """A copy of `config` reading Fashion-MNIST from `fashion_mnist_dir`."""
    config = copy.deepcopy(config)
    if self.fashion_mnist_dir:
      config.tfds_manual_dir = self.fashion_mnist_dir
    return config


def define_flags(options_type: type, flag_values=flags.FLAGS):
  """Defines a --flag per field of the `options_type` dataclass.

  Tuples become comma-separated lists. Studies call this only when run as
  a command, so that tests can import several studies at once (absl
  refuses a flag name defined by two modules).
  """
  hints = typing.get_type_hints(options_type)
  for field in dataclasses.fields(options_type):
    kind, help_text = hints[field.name], field.metadata['help']
    if typing.get_origin(kind) is tuple:
      flags.DEFINE_list(field.name, [str(v) for v in field.default],
                        help_text, flag_values=flag_values)
    else:
      define = {int: flags.DEFINE_integer,
                float: flags.DEFINE_float}.get(kind, flags.DEFINE_string)
      define(field.name, field.default, help_text, flag_values=flag_values)


def options_from_flags(options_type: type, flag_values=flags.FLAGS):
  """An `options_type` holding the parsed values of its --flags."""
  hints = typing.get_type_hints(options_type)
  values = {}
  for field in dataclasses.fields(options_type):
    value = flag_values[field.name].value
    kind = hints[field.name]
    if typing.get_origin(kind) is tuple:
      item = typing.get_args(kind)[0]
      try:
        value = tuple(item(v) for v in value)
      except ValueError as e:
        raise errors.ConfigError(
            f'--{field.name}={",".join(value)}: expected a comma-separated '
            f'list of {item.__name__} values.') from e
    values[field.name] = value
  return options_type(**values)


def command_line(module: str, args: Sequence[str]) -> str:
  """The shell command that runs `python -m module` with `args`."""
  return ' '.join([f'python -m {module}'] + [shlex.quote(a) for a in args])


def options_command(module: str, options) -> str:
  """The command that runs `module` with `options`, every flag spelt out.

  The study's own flags come first, those of every study last.
  """
  shared = {field.name for field in dataclasses.fields(StudyOptions)}
  args = []
  for field in sorted(dataclasses.fields(options),
                      key=lambda field: field.name in shared):
    value = getattr(options, field.name)
    if value is None:
      continue
    if isinstance(value, tuple):
      value = ','.join(str(v) for v in value)
    args.append(f'--{field.name}={value}')
  return command_line(module, args)
