"""Official `.npz` checkpoints: load, save and adapt them for fine-tuning.

The released checkpoints (gs://vit_models/...) are flat `numpy.savez` files
whose keys are the parameter paths joined by '/'. Paths are read through
`etils.epath`, so `gs://` works wherever TensorFlow's file system reaches.
`load_pretrained` also takes timm and Hugging Face ViT / DeiT checkpoints
(`vit_flax.pytorch_weights`).
"""

import io
import math
import re
from typing import Any, Dict, List, Mapping, Optional

from absl import logging
from etils import epath
import flax
import jax
import numpy as np
import scipy.ndimage

from vit_flax import errors
from vit_flax import models

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


def interpolate_posembed(posemb: np.ndarray, num_tokens: int,
                         has_class_token: Optional[bool] = None,
                         num_prefix_tokens: Optional[int] = None
                         ) -> np.ndarray:
  """Resizes (1, n, d) position embeddings to `num_tokens` tokens.

  The square grid is zoomed bilinearly (`scipy.ndimage.zoom`, order 1, as in
  the official code); the prefix rows ahead of it are kept as they are.
  Give the prefix as `num_prefix_tokens` (`models.num_prefix_tokens`: 2 for
  DeiT's class and distillation tokens) or, as vit_jax does,
  `has_class_token`; with both, `num_prefix_tokens` counts.
  """
  if has_class_token is None and num_prefix_tokens is None:
    raise TypeError('interpolate_posembed needs has_class_token or '
                    'num_prefix_tokens.')
  posemb = np.asarray(posemb)
  if posemb.ndim != 3 or posemb.shape[0] != 1:
    raise errors.CheckpointError(
        f'Position embeddings must have shape (1, tokens, width), got '
        f'{posemb.shape}.')
  num_prefix = (int(num_prefix_tokens) if num_prefix_tokens is not None
                else int(bool(has_class_token)))
  prefix, grid = posemb[:, :num_prefix], posemb[0, num_prefix:]
  gs_old = math.isqrt(len(grid))
  gs_new = math.isqrt(max(num_tokens - num_prefix, 0))
  if gs_old * gs_old != len(grid):
    raise errors.CheckpointError(
        f'Cannot resize position embeddings: {len(grid)} grid tokens '
        f'({posemb.shape[1]} with {num_prefix} prefix tokens) is not a '
        'square grid. Only square grids can be resized; check the classifier '
        '(token, token_distill or gap) matches the checkpoint.')
  if gs_new * gs_new != num_tokens - num_prefix:
    raise errors.CheckpointError(
        f'Cannot resize position embeddings to {num_tokens} tokens: '
        f'{num_tokens - num_prefix} grid tokens is not a square grid.')
  logging.info('interpolate_posembed: grid size from %d to %d', gs_old,
               gs_new)
  grid = grid.reshape(gs_old, gs_old, -1)
  zoom = (gs_new / gs_old, gs_new / gs_old, 1)
  grid = scipy.ndimage.zoom(grid, zoom, order=1)
  grid = grid.reshape(1, gs_new * gs_new, -1)
  return np.concatenate([prefix, grid], axis=1)


def checkpoint_prefix_tokens(flat: Mapping[str, Any]) -> int:
  """Prefix tokens of a checkpoint's model, from its token params."""
  return sum(1 for name in models.PREFIX_TOKEN_NAMES if name in flat)


def adapt_posembed(posemb: np.ndarray, fresh: np.ndarray, num_prefix: int,
                   new_num_prefix: int) -> np.ndarray:
  """A checkpoint's position embeddings for a model of another grid or
  another prefix-token count.

  The grid is resized (`interpolate_posembed`) to that of `fresh`, the
  model's initial embeddings; the first prefix rows are kept, rows of tokens
  the checkpoint lacks come from `fresh`, and those the model lacks are
  dropped (class token kept, distillation token added or removed).
  """
  posemb, fresh = np.asarray(posemb), np.asarray(fresh)
  grid_tokens = fresh.shape[1] - new_num_prefix
  if posemb.shape[1] - num_prefix != grid_tokens:
    posemb = interpolate_posembed(posemb, num_prefix + grid_tokens,
                                  num_prefix_tokens=num_prefix)
  kept = min(num_prefix, new_num_prefix)
  return np.concatenate([posemb[:, :kept], fresh[:, kept:new_num_prefix],
                         posemb[:, num_prefix:]], axis=1)


_GROUPNORM = re.compile(r'(^|/)gn(\d+|_root|_proj)/(scale|bias)$')


def _fix_groupnorm(flat: Dict[str, Any]) -> Dict[str, Any]:
  """Old hybrid checkpoints store GroupNorm params as (1, 1, 1, c)."""
  return {k: (np.reshape(v, (-1,)) if _GROUPNORM.search(k) else v)
          for k, v in flat.items()}


def load_pretrained(*, pretrained_path, init_params: Params,
                    model_config: Mapping[str, Any],
                    keep_head: bool = False) -> Params:
  """Loads a pre-trained checkpoint for fine-tuning, as vit_jax does.

  Args:
    pretrained_path: an official (or `save`d) `.npz` file, or a timm /
      Hugging Face ViT or DeiT checkpoint: a `.safetensors` file, a `.pth` /
      `.bin` / `.pt` state dict (needs torch), or a transformers model
      folder (see `vit_flax.pytorch_weights`). Their architecture, GELU
      flavour included, must be that of `model_config` (else an error names
      each difference).
    init_params: freshly initialised params of the model to fine-tune; they
      give the target shapes and the new head.
    model_config: the model config (`representation_size`, `classifier`).
    keep_head: keep the checkpoint's head when its shape fits (same classes),
      instead of the official reset; for exported models of the same task.

  Returns:
    Params with the structure, shapes and dtypes of `init_params`: the head is
    reset for the new class count, `pre_logits` kept or dropped by
    `representation_size`, and position embeddings resized to the new grid.
    Between `token` and `token_distill` (DeiT) models, the class token is
    kept: a model with a distillation token the checkpoint lacks starts
    `dist`, its position embedding and `head_dist` fresh (as the head), and
    a checkpoint's distillation token, row and head the model lacks are
    dropped.
  """
  init_flat = flatten(init_params)
  restored = _fix_groupnorm(flatten(
      _read_pretrained(pretrained_path, model_config, init_flat)))
  num_prefix = checkpoint_prefix_tokens(restored)

  if model_config.get('representation_size') is None:
    dropped = [k for k in restored if k.startswith('pre_logits/')]
    if dropped:
      logging.info('load_pretrained: dropping pre_logits (drop-head variant).')
    for k in dropped:
      del restored[k]
  if 'dist' in restored and 'dist' not in init_flat:
    dropped = [k for k in restored
               if k == 'dist' or k.startswith('head_dist/')]
    logging.info('load_pretrained: the model has no distillation token; '
                 'dropping %s.', dropped)
    for k in dropped:
      del restored[k]
  for k, v in init_flat.items():
    if k.split('/')[0] in _HEADS and not (
        keep_head and np.shape(restored.get(k)) == np.shape(v)):
      restored[k] = v  # New task, new head.
    elif (k.startswith('pre_logits/') or k == 'dist') and k not in restored:
      logging.info('load_pretrained: %s not in checkpoint, kept fresh.', k)
      restored[k] = v

  inspect_params(params=recover_tree(list(restored), list(restored.values())),
                 expected=init_params)

  posemb_key = 'Transformer/posembed_input/pos_embedding'
  new_num_prefix = models.num_prefix_tokens(
      model_config.get('classifier', 'token'))
  if posemb_key in init_flat and (
      np.shape(restored[posemb_key])[1] != np.shape(init_flat[posemb_key])[1]
      or num_prefix != new_num_prefix):
    logging.info('load_pretrained: resizing %s from %s (%d prefix tokens) to '
                 '%s (%d)', posemb_key, np.shape(restored[posemb_key]),
                 num_prefix, np.shape(init_flat[posemb_key]), new_num_prefix)
    restored[posemb_key] = adapt_posembed(
        restored[posemb_key], init_flat[posemb_key], num_prefix,
        new_num_prefix)

  check_shapes(restored, init_flat, f'Checkpoint {pretrained_path}')

  cast = {k: np.asarray(restored[k]).astype(np.asarray(v).dtype)
          for k, v in init_flat.items()}
  return recover_tree(list(cast), list(cast.values()))


# Layers reset for a new task: the head, and DeiT's distillation head.
_HEADS = ('head', 'head_dist')


def _read_pretrained(path, model_config: Mapping[str, Any],
                     init_flat: Mapping[str, Any]) -> Params:
  """The params of a `.npz`, or of a timm / HF checkpoint fitting the model."""
  # Imported here: pytorch_weights builds on this module.
  from vit_flax import pytorch_weights  # pylint: disable=g-import-not-at-top
  if not pytorch_weights.is_pytorch_checkpoint(path):
    return load(path)
  transformer = model_config.get('transformer') or {}
  params, arch = pytorch_weights.load(
      path, num_heads=transformer.get('num_heads'))
  pytorch_weights.check_fits(arch, model_config, init_flat, path)
  return params


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
