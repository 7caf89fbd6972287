"""Official `.npz` checkpoints: read, write and check params against a model.

The released checkpoints (gs://vit_models/...) are flat `numpy.savez` files
whose keys are the parameter paths joined by '/'. Paths are read through
`etils.epath`, so `gs://` works wherever TensorFlow's file system reaches.
"""

import io
import re
from typing import Any, Dict, List, Mapping, Optional

from absl import logging
from etils import epath
import flax
import jax
import numpy as np

from vit_flax import errors

Params = Dict[str, Any]


class CheckpointNotFoundError(errors.CheckpointError, FileNotFoundError):
  """No file at the checkpoint path."""


def flatten(params: Mapping[str, Any]) -> Dict[str, Any]:
  """{'a/b/kernel': array} from a nested params dict."""
  return flax.traverse_util.flatten_dict(
      flax.core.unfreeze(params), sep='/')


def natural_key(name: str) -> List[Any]:
  """Sort key putting 'encoderblock_2' before 'encoderblock_10'."""
  return [int(part) if part.isdigit() else part
          for part in re.split(r'(\d+)', name)]


def find_param(params: Mapping[str, Any], name: str) -> Optional[np.ndarray]:
  """The first parameter called `name`, in natural order of module names."""
  for key in sorted(params, key=natural_key):
    value = params[key]
    if key == name and not isinstance(value, Mapping):
      return np.asarray(jax.device_get(value))
    if isinstance(value, Mapping):
      found = find_param(value, name)
      if found is not None:
        return found
  return None


def recover_tree(keys, values) -> Params:
  """Nested dict from '/'-joined keys, as stored in official checkpoints."""
  return flax.traverse_util.unflatten_dict(dict(zip(keys, values)), sep='/')


def load(path) -> Params:
  """Reads an official flat `.npz` checkpoint into a nested params dict."""
  path = epath.Path(path)
  if not path.exists():
    raise CheckpointNotFoundError(
        f'Checkpoint {path} does not exist. Give the path of a .npz file, '
        'e.g. one downloaded from gs://vit_models/imagenet21k/ViT-B_16.npz.')
  try:
    data = path.read_bytes()
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
      arrays = {key: npz[key] for key in npz.files}
  except Exception as e:  # zipfile, pickle and format errors all end here.
    raise errors.CheckpointError(
        f'Checkpoint {path} is not a readable .npz file ({type(e).__name__}: '
        f'{e}). It may be truncated or of another format; download it again '
        'or point to a file written by numpy.savez / vit_flax.checkpoint.save.'
    ) from e
  if not arrays:
    raise errors.CheckpointError(f'Checkpoint {path} holds no arrays.')
  return recover_tree(list(arrays), list(arrays.values()))


def npz_bytes(params: Mapping[str, Any]) -> bytes:
  """The official flat `.npz` file of params, in memory."""
  flat = {}
  for key, value in flatten(jax.device_get(params)).items():
    value = np.asarray(value)
    if value.dtype.kind == 'V' or value.dtype.name == 'bfloat16':
      value = value.astype(np.float32)  # .npz has no bfloat16.
    flat[key] = value
  buffer = io.BytesIO()
  np.savez(buffer, **flat)
  return buffer.getvalue()


def save(params: Mapping[str, Any], path) -> None:
  """Writes params as an official flat `.npz`, atomically.

  The file appears only once complete (written beside it, then renamed), so
  an interrupted save never leaves a half-written checkpoint.
  """
  path = epath.Path(path)
  data = npz_bytes(params)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f'.{path.name}.tmp'
  tmp.write_bytes(data)
  tmp.rename(path)


def inspect_params(*, params: Params, expected: Params,
                   fail_if_extra: bool = True,
                   fail_if_missing: bool = True) -> Params:
  """Logs (or raises on) keys of `params` missing from or extra to `expected`."""
  params_flat = flatten(params)
  expected_flat = flatten(expected)
  missing = sorted(set(expected_flat) - set(params_flat))
  extra = sorted(set(params_flat) - set(expected_flat))
  # Empty dicts stand for modules without params (e.g. an identity pre_logits).
  missing = [k for k in missing if not _is_empty(expected_flat[k])]
  extra = [k for k in extra if not _is_empty(params_flat[k])]
  if missing:
    logging.info('Checkpoint lacks %d keys of the model: %s', len(missing),
                 missing)
  if extra:
    logging.info('Checkpoint has %d keys the model lacks: %s', len(extra),
                 extra)
  if (missing and fail_if_missing) or (extra and fail_if_extra):
    raise errors.CheckpointError(
        'The checkpoint does not match the model architecture: '
        f'{_describe_keys("missing from the checkpoint", missing)}'
        f'{_describe_keys("extra in the checkpoint", extra)}'
        'Check that the model config (model_name, hidden_size, num_layers, '
        'classifier, resnet) is the one the checkpoint was trained with.')
  return params


def _is_empty(value) -> bool:
  return isinstance(value, dict) and not value


def _describe_keys(what: str, keys, limit: int = 8) -> str:
  if not keys:
    return ''
  shown = ', '.join(keys[:limit])
  more = f' and {len(keys) - limit} more' if len(keys) > limit else ''
  return f'{len(keys)} keys {what} ({shown}{more}); '


def load_params(path, init_params: Optional[Params] = None) -> Params:
  """Loads `path`; with `init_params`, also checks keys and shapes match."""
  params = load(path)
  if init_params is not None:
    check_fits(params, init_params, f'Checkpoint {path}')
  return params


def check_fits(params: Params, expected: Params, source: str) -> None:
  """Raises CheckpointError unless `params` have the keys and shapes of
  `expected` (arrays or shape structs); `source` names them in the error."""
  inspect_params(params=params, expected=expected)
  check_shapes(flatten(params), flatten(expected), source)


def check_shapes(flat: Dict[str, Any], expected_flat: Dict[str, Any],
                 source: str) -> None:
  """Raises CheckpointError naming the params whose shapes differ."""
  mismatched = [
      f'{k}: checkpoint {np.shape(flat[k])} vs model {tuple(np.shape(v))}'
      for k, v in expected_flat.items() if np.shape(flat[k]) != np.shape(v)]
  if mismatched:
    raise errors.CheckpointError(
        f'{source} has {len(mismatched)} parameters of other shapes than the '
        f'model: {"; ".join(mismatched[:8])}'
        f'{" ..." if len(mismatched) > 8 else ""}. Check that the model '
        'config (model_name, hidden_size, mlp_dim, num_heads, patches, '
        'classifier) is the one the checkpoint was trained with.')
