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
from typing import Any, Dict, Mapping, Optional

from absl import logging
from etils import epath
import flax
import jax
import numpy as np
import scipy.ndimage

from vit_flax import errors

Params = Dict[str, Any]


class CheckpointError(errors.UserError):
  """A checkpoint that cannot be read or does not fit the model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
  """No file at the checkpoint path."""


def flatten(params: Mapping[str, Any]) -> Dict[str, Any]:
  """{'a/b/kernel': array} from a nested params dict."""
  return flax.traverse_util.flatten_dict(
      flax.core.unfreeze(params), sep='/')


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
    raise CheckpointError(
        f'Checkpoint {path} is not a readable .npz file ({type(e).__name__}: '
        f'{e}). It may be truncated or of another format; download it again '
        'or point to a file written by numpy.savez / vit_flax.checkpoint.save.'
    ) from e
  if not arrays:
    raise CheckpointError(f'Checkpoint {path} holds no arrays.')
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
    raise CheckpointError(
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
                         has_class_token: bool,
                         num_prefix_tokens: Optional[int] = None
                         ) -> np.ndarray:
  """Resizes (1, n, d) position embeddings to `num_tokens` tokens.

  The square grid is zoomed bilinearly (`scipy.ndimage.zoom`, order 1, as in
  the official code); the class token embedding is kept as is.
  `num_prefix_tokens`, if given, is the number of such tokens kept instead
  (2 for DeiT's class and distillation tokens).
  """
  posemb = np.asarray(posemb)
  if posemb.ndim != 3 or posemb.shape[0] != 1:
    raise CheckpointError(
        f'Position embeddings must have shape (1, tokens, width), got '
        f'{posemb.shape}.')
  num_prefix = 1 if has_class_token else 0
  if num_prefix_tokens is not None:
    num_prefix = num_prefix_tokens
  prefix, grid = posemb[:, :num_prefix], posemb[0, num_prefix:]
  gs_old = math.isqrt(len(grid))
  gs_new = math.isqrt(num_tokens - num_prefix)
  if gs_old * gs_old != len(grid):
    raise CheckpointError(
        f'Cannot resize position embeddings: {len(grid)} grid tokens '
        f'({posemb.shape[1]} with {num_prefix} class token) is not a square '
        'grid. Only square grids can be resized; check the classifier '
        '(token vs gap) matches the checkpoint.')
  if gs_new * gs_new != num_tokens - num_prefix:
    raise CheckpointError(
        f'Cannot resize position embeddings to {num_tokens} tokens: '
        f'{num_tokens - num_prefix} grid tokens is not a square grid.')
  logging.info('interpolate_posembed: grid size from %d to %d', gs_old,
               gs_new)
  grid = grid.reshape(gs_old, gs_old, -1)
  zoom = (gs_new / gs_old, gs_new / gs_old, 1)
  grid = scipy.ndimage.zoom(grid, zoom, order=1)
  grid = grid.reshape(1, gs_new * gs_new, -1)
  return np.concatenate([prefix, grid], axis=1)


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
  """
  init_flat = flatten(init_params)
  restored = _fix_groupnorm(flatten(
      _read_pretrained(pretrained_path, model_config, init_flat)))

  if model_config.get('representation_size') is None:
    dropped = [k for k in restored if k.startswith('pre_logits/')]
    if dropped:
      logging.info('load_pretrained: dropping pre_logits (drop-head variant).')
    for k in dropped:
      del restored[k]
  for k, v in init_flat.items():
    if k.split('/')[0] in _HEADS and not (
        keep_head and np.shape(restored.get(k)) == np.shape(v)):
      restored[k] = v  # New task, new head.
    elif k.startswith('pre_logits/') and k not in restored:
      logging.info('load_pretrained: %s not in checkpoint, kept fresh.', k)
      restored[k] = v

  inspect_params(params=recover_tree(list(restored), list(restored.values())),
                 expected=init_params)

  posemb_key = 'Transformer/posembed_input/pos_embedding'
  if posemb_key in init_flat and (np.shape(restored[posemb_key])[1] !=
                                  np.shape(init_flat[posemb_key])[1]):
    logging.info('load_pretrained: resizing %s from %s to %s', posemb_key,
                 np.shape(restored[posemb_key]),
                 np.shape(init_flat[posemb_key]))
    has_class_token = model_config.get('classifier', 'token') in (
        'token', 'token_unpooled')
    restored[posemb_key] = interpolate_posembed(
        restored[posemb_key], num_tokens=init_flat[posemb_key].shape[1],
        has_class_token=has_class_token,
        num_prefix_tokens=int(has_class_token) + int('dist' in init_flat))

  _check_shapes(restored, init_flat, pretrained_path)

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
    inspect_params(params=params, expected=init_params)
    _check_shapes(flatten(params), flatten(init_params), path)
  return params


def _check_shapes(flat: Dict[str, Any], init_flat: Dict[str, Any], path):
  mismatched = [
      f'{k}: checkpoint {np.shape(flat[k])} vs model {np.shape(v)}'
      for k, v in init_flat.items() if np.shape(flat[k]) != np.shape(v)]
  if mismatched:
    raise CheckpointError(
        f'Checkpoint {path} has {len(mismatched)} parameters of other shapes '
        f'than the model: {"; ".join(mismatched[:8])}'
        f'{" ..." if len(mismatched) > 8 else ""}. Check that the model '
        'config (model_name, hidden_size, mlp_dim, num_heads, patches) is the '
        'one the checkpoint was trained with.')
