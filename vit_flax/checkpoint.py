"""vit_jax's `checkpoint` module: official `.npz` checkpoints, and loading
them for fine-tuning (`load_pretrained`, `interpolate_posembed`).

The code lives in `vit_flax.weights.npz` (the file format) and
`vit_flax.weights.pretrained` (adapting weights to a model); these are its
names as users of vit_jax look for them.
"""

from vit_flax.weights.npz import check_fits
from vit_flax.weights.npz import CheckpointNotFoundError
from vit_flax.weights.npz import find_param
from vit_flax.weights.npz import flatten
from vit_flax.weights.npz import inspect_params
from vit_flax.weights.npz import load
from vit_flax.weights.npz import load_params
from vit_flax.weights.npz import recover_tree
from vit_flax.weights.npz import save
from vit_flax.weights.pretrained import adapt_posembed
from vit_flax.weights.pretrained import interpolate_posembed
from vit_flax.weights.pretrained import load_pretrained

__all__ = [
  'CheckpointNotFoundError',
  'check_fits',
  'find_param',
  'flatten',
  'inspect_params',
  'load',
  'load_params',
  'recover_tree',
  'save',
  'adapt_posembed',
  'interpolate_posembed',
  'load_pretrained',
]
