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

import difflib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from typing import Dict, List, Optional, Sequence

from absl import app
from absl import flags
import ml_collections

from vit_flax import errors

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
  """Runs the command `vit_flax.commands.<module_name>` (flags defined on
  demand)."""
  module = importlib.import_module(f'vit_flax.commands.{module_name}')
  add_config_roots()
  module.define_flags()
  show_flags_in_help(*flag_modules)
  app.run(module.main)


def predict():
  """`vit-flax-predict`: `python -m vit_flax.predict`."""
  _run('predict', 'vit_flax.commands.predict', 'vit_flax.commands.inference')


def visualize():
  """`vit-flax-visualize`: `python -m vit_flax.visualize`."""
  _run('visualize', 'vit_flax.commands.visualize',
       'vit_flax.commands.inference')


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """The `get_config()` of a config file, `path[:argument]`, as `--config`
  loads it; its imports (`from configs import common`) resolve from the
  folder above its package."""
  path, _, argument = spec.partition(':')
  if not os.path.isfile(path):
    raise errors.ConfigError(
        f'Config file {path} does not exist; give the path of the config the '
        'teacher was trained with, e.g. configs/resnet8_quickstart.py.')
  root = config_root(path)
  if root not in sys.path:
    sys.path.insert(0, root)
  module_spec = importlib.util.spec_from_file_location('loaded_config', path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    return module.get_config(*([argument] if argument else []))
  except errors.UserError:
    raise
  except Exception as e:  # A config file is code: anything can go wrong.
    raise errors.ConfigError(
        f'Config file {spec} cannot be loaded ({type(e).__name__}: {e}).'
    ) from e


# Bad command lines and config files: one paragraph, not a traceback.

# Set to 1 to see the full traceback of a flag or config error.
TRACEBACK_ENV = 'VIT_FLAX_TRACEBACK'


def _chain(error: BaseException) -> List[BaseException]:
  """`error` and the exceptions it was raised from, outermost first."""
  chain, seen = [], set()
  while error is not None and id(error) not in seen:
    chain.append(error)
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return chain


def _missing_override(argv: Sequence[str], config) -> Optional[str]:
  """The first `--config.a.b=...` of `argv` naming no field of `config`,
  described with the fields that do exist there."""
  for arg in argv:
    name = arg.split('=', 1)[0].lstrip('-')
    if not name.startswith('config.'):
      continue
    node, path = config, []
    for key in name.split('.')[1:]:
      if not hasattr(node, 'keys') or key not in node:
        fields = sorted(node.keys()) if hasattr(node, 'keys') else []
        close = difflib.get_close_matches(key, fields, n=3)
        where = '.'.join(['config'] + path)
        hint = (f'did you mean {", ".join(where + "." + c for c in close)}? '
                if close else '')
        return (f'--{name}: {where} has no field {key!r}; {hint}its fields '
                f'are {", ".join(fields)}. Print them all, with what each '
                'does, with --print_config.')
      node, path = node[key], path + [key]
  return None


def describe_flag_error(error: BaseException, argv: Sequence[str],
                        config=None) -> str:
  """One paragraph for a command line or config file that cannot be used."""
  chain = _chain(error)
  syntax = next((e for e in chain if isinstance(e, SyntaxError)), None)
  if syntax is not None:
    return (f'The config file {syntax.filename} has a syntax error on line '
            f'{syntax.lineno}: {syntax.msg}: {(syntax.text or "").strip()!r}.')
  missing = next((e for e in chain if isinstance(e, FileNotFoundError)), None)
  if missing is not None or any('No such file' in str(e) for e in chain):
    files = [a.split('=', 1)[1].split(':')[0] for a in argv
             if a.startswith(('--config=', '-config='))]
    name = files[0] if files else getattr(missing, 'filename', '?')
    return (f'The config file {name} does not exist; give the path of a '
            'config file, e.g. --config=configs/quickstart.py (the files '
            'are in the configs/ folder of the repository).')
  if config is not None and any(isinstance(e, (KeyError, AttributeError))
                                for e in chain):
    described = _missing_override(argv, config)
    if described:
      return described
  user = next((e for e in chain if isinstance(e, errors.UserError)), None)
  if user is not None:
    return str(user)
  message = str(chain[-1]).strip().splitlines()
  return (f'{type(chain[-1]).__name__}: '
          f'{message[0] if message else ""} (while reading the flags).')


def parse_flags(argv: Sequence[str]) -> List[str]:
  """absl's flag parsing, with bad flags and config files described in one
  paragraph (the traceback with VIT_FLAX_TRACEBACK=1)."""
  try:
    remaining = flags.FLAGS(argv)
    if 'config' in flags.FLAGS and flags.FLAGS['config'].value is not None:
      # ml_collections defers a failed load to the first use of the config.
      flags.FLAGS['config'].value.keys()
    return remaining
  except Exception as e:  # pylint: disable=broad-except
    if os.environ.get(TRACEBACK_ENV):
      raise
    config = None
    for spec in config_arguments(argv):
      try:
        config = load_config_file(spec)
      except Exception:  # pylint: disable=broad-except
        pass
    sys.exit(f'Error: {describe_flag_error(e, argv, config)} (Set '
             f'{TRACEBACK_ENV}=1 to see the full traceback.)')


# --print_config: the resolved config, each field with its comment.


def field_comments() -> Dict[str, str]:
  """Dotted field -> the comment beside it in configs/common.py and in the
  model presets (`presets.vit_config`), where those are importable."""
  comments = {}
  sources = []
  try:
    from vit_flax.configs import common  # pylint: disable=g-import-not-at-top
    sources.append(('', inspect.getsource(common)))
  except ImportError:
    pass
  from vit_flax.models import presets  # pylint: disable=g-import-not-at-top
  sources.append(('model.', inspect.getsource(presets.vit_config)))
  for prefix, source in sources:
    for match in re.finditer(r'config\.([\w.]+) = [^#\n]*#\s*(.+)', source):
      comments.setdefault(prefix + match.group(1), match.group(2).strip())
  return comments


def describe_config(config) -> str:
  """Every field of `config` as `name = value  # what it is`."""
  comments = field_comments()
  lines = []
  for name, value in sorted(_flatten(config.to_dict()).items()):
    comment = comments.get(name)
    lines.append(f'{name} = {value!r}' + (f'  # {comment}' if comment else ''))
  return '\n'.join(lines)


def _flatten(tree, prefix: str = '') -> Dict[str, object]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat
