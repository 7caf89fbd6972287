"""What the console commands share; `vit-flax-predict` and `-visualize`.

The commands (`pyproject.toml`) are one per module, as `python -m
vit_flax.<module>`: `vit-flax-train` (`vit_flax.main`), `vit-flax-export`,
`vit-flax-predict` and `vit-flax-visualize`. absl flags are global to a
process and each module defines its own, so one command per process keeps
each `--help` to that command's flags (one `vit-flax` with subcommands
would load every module's flags).

Config files import their shared defaults as `from configs import common`,
which Python finds when it runs from the repository root (as `python
main.py` does). The commands run from any folder, so before the flags are
parsed (which loads the config file) they put on `sys.path` the folder that
holds the config file's package: for `/path/to/vit_flax/configs/x.py`, the
folder `/path/to/vit_flax`. A config's imports thus resolve where the file
lives, whatever the working directory.
"""

import importlib
import os
import sys
from typing import List, Optional, Sequence

from absl import app
from absl import flags

CONFIG_FLAGS = ('--config', '-config')


def config_root(config_argument: str) -> str:
  """The folder above the package of a `--config` file (path[:argument]).

  That is the first folder upwards from the file without an `__init__.py`;
  for a file outside any package, its own folder (as Python does for a
  script).
  """
  path = config_argument.split(':', 1)[0]
  folder = os.path.dirname(os.path.abspath(os.path.expanduser(path)))
  while os.path.exists(os.path.join(folder, '__init__.py')):
    folder = os.path.dirname(folder)
  return folder


def config_arguments(argv: Sequence[str]) -> List[str]:
  """The values of `--config=X` / `--config X` in a command line."""
  values = []
  for i, arg in enumerate(argv):
    name, equals, value = arg.partition('=')
    if name in CONFIG_FLAGS:
      if equals:
        values.append(value)
      elif i + 1 < len(argv):
        values.append(argv[i + 1])
  return values


def add_config_roots(argv: Optional[Sequence[str]] = None) -> None:
  """Puts each `--config` file's `config_root` first on `sys.path`."""
  for argument in config_arguments(sys.argv if argv is None else argv):
    root = config_root(argument)
    sys.path[:] = [root] + [p for p in sys.path if p != root]


def show_flags_in_help(*module_names: str) -> None:
  """Lists the modules' flags in `--helpshort` of the running command.

  absl shows there the flags of the main module (`sys.argv[0]`), which for
  an installed command or the `main.py` shim is not where they are defined.
  """
  for name in module_names:
    for flag in flags.FLAGS.get_key_flags_for_module(name):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def _run(module_name: str, *flag_modules: str) -> None:
  """Runs `python -m vit_flax.<module_name>` (flags defined on demand)."""
  module = importlib.import_module(f'vit_flax.{module_name}')
  add_config_roots()
  module.define_flags()
  show_flags_in_help(*flag_modules)
  app.run(module.main)


def predict():
  """`vit-flax-predict`: `python -m vit_flax.predict`."""
  _run('predict', 'vit_flax.predict', 'vit_flax.inference')


def visualize():
  """`vit-flax-visualize`: `python -m vit_flax.visualize`."""
  _run('visualize', 'vit_flax.visualize', 'vit_flax.inference')
