"""Pre-trained weights adapted for fine-tuning, as vit_jax does: the head
reset, `pre_logits` kept or dropped, position embeddings resized to the new
grid (`interpolate_posembed`). Reads official `.npz` files and timm and
Hugging Face ViT / DeiT checkpoints (`pytorch_read`).
"""

import math
import re
from typing import Any, Dict, Mapping, Optional

from absl import logging
import numpy as np
import scipy.ndimage

from vit_flax import errors
from vit_flax.models import vit
from vit_flax.weights import npz
from vit_flax.weights import pytorch_read


def interpolate_posembed(posemb: np.ndarray, num_tokens: int,
                         has_class_token: Optional[bool] = None,
                         num_prefix_tokens: Optional[int] = None
                         ) -> np.ndarray:
  """Resizes (1, n, d) position embeddings to `num_tokens` tokens.

  The square grid is zoomed bilinearly (`scipy.ndimage.zoom`, order 1, as in
  the official code); the prefix rows ahead of it are kept as they are.
  Give the prefix as `num_prefix_tokens` (`vit.num_prefix_tokens`: 2 for
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
  return sum(1 for name in vit.PREFIX_TOKEN_NAMES if name in flat)


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


def adopt_checkpoint_settings(config) -> None:
  """Sets in `config.model` what `config.pretrained_path` states about how
  its model computes and the config leaves open: the LayerNorm epsilon of a
  Hugging Face checkpoint (1e-12, where vit_flax's default is 1e-6), when
  `model.layer_norm_eps` is unset. Reads the checkpoint's config.json only."""
  model = config.get('model')
  if (model is None or model.get('layer_norm_eps') is not None or
      not pytorch_read.is_pytorch_checkpoint(config.pretrained_path)):
    return
  eps = pytorch_read.stated_layer_norm_eps(config.pretrained_path)
  if eps is None or eps == vit.DEFAULT_LAYER_NORM_EPS:
    return
  with model.unlocked():
    model.layer_norm_eps = eps
  logging.info('config.model.layer_norm_eps=%g, as the config.json of %s '
               'says.', eps, config.pretrained_path)


def load_pretrained(*, pretrained_path, init_params: npz.Params,
                    model_config: Mapping[str, Any],
                    keep_head: bool = False) -> npz.Params:
  """Loads a pre-trained checkpoint for fine-tuning, as vit_jax does.

  Args:
    pretrained_path: an official (or `npz.save`d) `.npz` file, or a timm /
      Hugging Face ViT or DeiT checkpoint: a `.safetensors` file, a `.pth` /
      `.bin` / `.pt` state dict (needs torch), or a transformers model
      folder (see `vit_flax.weights.pytorch_read`). Their architecture, GELU
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
  init_flat = npz.flatten(init_params)
  restored = _fix_groupnorm(npz.flatten(
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

  npz.inspect_params(params=npz.recover_tree(list(restored),
                                             list(restored.values())),
                     expected=init_params)

  posemb_key = 'Transformer/posembed_input/pos_embedding'
  new_num_prefix = vit.num_prefix_tokens(
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

  npz.check_shapes(restored, init_flat, f'Checkpoint {pretrained_path}')

  cast = {k: np.asarray(restored[k]).astype(np.asarray(v).dtype)
          for k, v in init_flat.items()}
  return npz.recover_tree(list(cast), list(cast.values()))


# Layers reset for a new task: the head, and DeiT's distillation head.
_HEADS = ('head', 'head_dist')


def _read_pretrained(path, model_config: Mapping[str, Any],
                     init_flat: Mapping[str, Any]) -> npz.Params:
  """The params of a `.npz`, or of a timm / HF checkpoint fitting the model."""
  if not pytorch_read.is_pytorch_checkpoint(path):
    return npz.load(path)
  transformer = model_config.get('transformer') or {}
  params, arch = pytorch_read.load(
      path, num_heads=transformer.get('num_heads'))
  pytorch_read.check_fits(arch, model_config, init_flat, path)
  return params
