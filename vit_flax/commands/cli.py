"""What the console commands share; `vit-flax-predict` and `-visualize`.

The commands (`pyproject.toml`) are one per module, as `python -m
vit_flax.<module>`: `vit-flax-train` (`vit_flax.main`), `vit-flax-export`,
`vit-flax-predict` and `vit-flax-visualize`. absl flags are global to a
process and each module defines its own, so one command per process keeps
each `--help` to that command's flags (one `vit-flax` with subcommands
would load every module's flags).

A config is a file, `--config=path/to/config.py[:argument]`, or the name of
a config that ships with the package (`vit_flax/configs/`):
`--config=quickstart`, `--config=vit_b16_finetune:cifar100`, from any
folder. Config files import their shared defaults as `from vit_flax.configs
import common` (older ones as `from configs import common`, which resolves
in a checkout of the repository). The commands run from any folder, so
before the flags are parsed (which loads the config file) they put on
`sys.path` the folder that holds the config file's package: for
`/path/to/repo/configs/x.py`, the folder `/path/to/repo`. A config's imports
thus resolve where the file lives, whatever the working directory.
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
# The configs that ship with the package, named without a path.
SHIPPED_CONFIGS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
# Modules of that folder that are not configs of a run.
_NOT_CONFIGS = ('__init__', 'common')


def shipped_configs() -> List[str]:
  """Names of the configs in `vit_flax/configs/` (`--config=<name>`)."""
  return sorted(name[:-3] for name in os.listdir(SHIPPED_CONFIGS_DIR)
                if name.endswith('.py') and name[:-3] not in _NOT_CONFIGS)


def shipped_config_path(spec: str) -> Optional[str]:
  """`spec` (name[:argument]) as the path of a shipped config, or None when
  it names none (a path with a folder is never a name)."""
  name, colon, argument = spec.partition(':')
  if name.endswith('.py'):
    name = name[:-3]
  if not name or os.sep in name or '/' in name or (
      name not in shipped_configs()):
    return None
  return os.path.join(SHIPPED_CONFIGS_DIR, f'{name}.py') + colon + argument


def resolve_config(spec: str) -> str:
  """The `--config` value `spec` with a shipped config's name replaced by
  its path; a file that exists (or any other value) stays as it is."""
  path = spec.partition(':')[0]
  if os.path.isfile(os.path.expanduser(path)):
    return spec
  return shipped_config_path(spec) or spec


def unknown_config_message(path: str) -> str:
  """What to say of a `--config` that is neither a file nor a name."""
  names = shipped_configs()
  close = difflib.get_close_matches(
      os.path.basename(path).removesuffix('.py'), names, n=1)
  hint = f'did you mean --config={close[0]}? ' if close else ''
  return (f'The config {path} is neither a file nor the name of a shipped '
          f'config; {hint}give the path of a config file (e.g. '
          '--config=configs/quickstart.py in the repository) or the name of '
          f'one that ships with vit_flax: {", ".join(names)} (e.g. '
          '--config=quickstart or --config=vit_b16_finetune:cifar100).')


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


def resolve_config_names(argv: List[str]) -> None:
  """Replaces, in place, each `--config` value of `argv` that names a
  shipped config (`quickstart`) by the path of its file."""
  for i, arg in enumerate(argv):
    name, equals, value = arg.partition('=')
    if name not in CONFIG_FLAGS:
      continue
    if equals:
      argv[i] = f'{name}={resolve_config(value)}'
    elif i + 1 < len(argv):
      argv[i + 1] = resolve_config(argv[i + 1])


def add_config_roots(argv: Optional[List[str]] = None) -> None:
  """Resolves shipped config names in `argv` (default: `sys.argv`, in
  place), then puts each `--config` file's `config_root` first on
  `sys.path`."""
  argv = sys.argv if argv is None else argv
  resolve_config_names(argv)
  for argument in config_arguments(argv):
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
  path, _, argument = resolve_config(spec).partition(':')
  if not os.path.isfile(path):
    raise errors.ConfigError(unknown_config_message(path))
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
    return unknown_config_message(name)
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
