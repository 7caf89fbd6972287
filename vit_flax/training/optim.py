"""Optimisers and learning-rate schedules, built from optax.

SGD with momentum (bf16 accumulator as in vit_jax) for fine-tuning; Adam and
AdamW, with weight decay on kernels only, for training from scratch; Muon
(optax.contrib's Newton-Schulz orthogonalised momentum) on the hidden
matrices with AdamW on the rest. All start with global-norm clipping when
`grad_norm_clip` > 0.
"""

import math
from typing import Optional, Sequence, Tuple

import flax
import jax.numpy as jnp
import optax
import optax.contrib

from vit_flax import errors

OPTIMIZERS = ('sgd', 'adam', 'adamw', 'muon')
DECAY_TYPES = ('cosine', 'linear', 'constant')


def create_learning_rate_schedule(total_steps: int, base_lr: float,
                                  decay_type: str, warmup_steps: int,
                                  linear_end: float = 1e-5) -> optax.Schedule:
  """Linear warm-up from 0 to `base_lr`, then cosine or linear decay."""
  if decay_type not in DECAY_TYPES:
    raise errors.ConfigError(f'Unknown decay_type {decay_type!r}; expected one '
                             f'of {DECAY_TYPES}.')
  if not 0 <= warmup_steps < total_steps:
    raise errors.ConfigError(
        f'warmup_steps={warmup_steps} must be in [0, total_steps='
        f'{total_steps}): the warm-up must end before training does; for a '
        f'short run set both, e.g. --config.total_steps={total_steps} '
        f'--config.warmup_steps={max(total_steps // 10, 0)}.')
  decay_steps = total_steps - warmup_steps
  if decay_type == 'cosine':
    decay = optax.cosine_decay_schedule(base_lr, decay_steps)
  elif decay_type == 'linear':
    decay = optax.linear_schedule(base_lr, linear_end, decay_steps)
  else:
    decay = optax.constant_schedule(base_lr)
  if not warmup_steps:
    return decay
  warmup = optax.linear_schedule(0.0, base_lr, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def weight_decay_mask(params):
  """True for kernels; biases, norms, position embeddings and cls: False."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict(
      {path: path[-1] == 'kernel' for path in flat})


# Layers that read the image or write the logits stay on AdamW under Muon,
# whatever their shape: Muon is for the hidden matrices, and Keller Jordan's
# recipe keeps the input embedding and the classifier head on Adam. Here: the
# patch embedding (also the hybrid's, on the ResNet's features), the
# shifted-patch tokenizer, the Mixer's stem, the ResNet root conv, the heads.
MUON_EXCLUDED_LAYERS = ('embedding', 'spt', 'stem', 'conv_root', 'head',
                        'head_dist')
# The first conv of the convolutional tokenizers reads the image too; their
# later convs are hidden layers.
MUON_EXCLUDED_PATHS = (('tokenizer', 'conv_0'), ('conv_stem', 'conv_0'))
# Attention's DenseGeneral kernels: q/k/v (width, heads, head_dim) read the
# width; out (heads, head_dim, width) reads every head's output.
_ATTENTION_INPUTS = ('query', 'key', 'value')
_ATTENTION_OUTPUT = 'out'
MuonDimensionNumbers = optax.contrib.MuonDimensionNumbers


def muon_dimension_numbers(path: Sequence[str], shape: Tuple[int, ...],
                           conv_kernels: bool = True
                           ) -> Optional[MuonDimensionNumbers]:
  """How Muon sees the param at `path` as a matrix; None: AdamW updates it.

  Muon orthogonalises the update of every kernel that is a matrix of the
  hidden layers: Dense kernels (inputs, outputs); the attention's q/k/v
  kernels as (width, heads * head_dim) and its out kernel as
  (heads * head_dim, width); and, with `conv_kernels`, conv kernels
  (kh, kw, in, out) as the (kh * kw * in, out) matrix of their im2col
  matmul, as the CIFAR-10 speedruns do. Everything else is AdamW's: biases,
  norms, position embeddings, class tokens, depthwise conv kernels (in = 1:
  a k x k filter per channel, no matrix to orthogonalise), matrices of one
  row or column (vectors, e.g. a pooling score), and the layers of
  `MUON_EXCLUDED_LAYERS` and `MUON_EXCLUDED_PATHS`.

  Args:
    path: the param's keys in the param tree, e.g. ('Transformer',
      'encoderblock_0', 'MlpBlock_3', 'Dense_0', 'kernel').
    shape: the param's shape.
    conv_kernels: whether conv kernels get Muon.
  """
  if path[-1] != 'kernel' or any(name in MUON_EXCLUDED_LAYERS
                                 for name in path) or any(
                                     tuple(path[:len(prefix)]) == prefix
                                     for prefix in MUON_EXCLUDED_PATHS):
    return None
  layer = path[-2] if len(path) > 1 else ''
  if len(shape) == 2:
    dims = MuonDimensionNumbers(reduction_axis=(0,), output_axis=(1,))
  elif len(shape) == 3 and layer in _ATTENTION_INPUTS:
    dims = MuonDimensionNumbers(reduction_axis=(0,), output_axis=(1, 2))
  elif len(shape) == 3 and layer == _ATTENTION_OUTPUT:
    dims = MuonDimensionNumbers(reduction_axis=(0, 1), output_axis=(2,))
  elif len(shape) == 4 and conv_kernels and shape[2] > 1:
    dims = MuonDimensionNumbers(reduction_axis=(0, 1, 2), output_axis=(3,))
  else:
    return None
  # A matrix of one row or column is a vector: orthogonalising it would
  # only normalise it.
  return dims if min(_fans(shape, dims)) > 1 else None


def _fans(shape: Tuple[int, ...], dims: MuonDimensionNumbers
          ) -> Tuple[int, int]:
  """(rows, columns) of the matrix that `dims` make of a `shape` param."""
  return tuple(math.prod(shape[axis] for axis in axes)
               for axes in (dims.reduction_axis, dims.output_axis))


def _map_with_path(fn, tree):
  """`fn(path, leaf)` for each leaf of a nested dict (leaves may be
  `optax.MaskedNode`s: the params of the other half of a partition)."""
  flat = flax.traverse_util.flatten_dict(tree)
  return flax.traverse_util.unflatten_dict(
      {path: fn(path, leaf) for path, leaf in flat.items()})


def muon_labels(params, conv_kernels: bool = True):
  """'muon' or 'adam' for each param: which half of optimizer='muon'
  updates it (see `muon_dimension_numbers`)."""
  def label(path, param):
    dims = muon_dimension_numbers(path, jnp.shape(param), conv_kernels)
    return 'adam' if dims is None else 'muon'
  return _map_with_path(label, params)


def _muon_half(config, schedule: optax.Schedule, dtype, weight_decay: float
               ) -> optax.GradientTransformation:
  """Muon on the params labelled 'muon' (its half of the partition)."""
  muon = config.get('muon') or {}
  conv_kernels = muon.get('conv_kernels', True)
  rms = muon.get('consistent_rms', 0.2)

  def dimension_numbers(updates):
    return _map_with_path(
        lambda path, x: x if isinstance(x, optax.MaskedNode) else
        muon_dimension_numbers(path, x.shape, conv_kernels), updates)

  def match_adamw_rms(updates, params=None):
    # sqrt(max(fan_in, fan_out)) * rms: an orthogonalised matrix has an RMS
    # of about 1 / sqrt(max(fan_in, fan_out)); this makes it `rms`, about
    # AdamW's (arXiv 2502.16982), so one learning rate serves both halves.
    del params

    def scale(path, update):
      if isinstance(update, optax.MaskedNode):
        return update
      dims = muon_dimension_numbers(path, update.shape, conv_kernels)
      return update * (rms * math.sqrt(max(_fans(update.shape, dims))))
    return _map_with_path(scale, updates)

  return optax.chain(
      optax.contrib.scale_by_muon(
          ns_steps=muon.get('ns_steps', 5), beta=muon.get('beta', 0.95),
          mu_dtype=dtype, nesterov=muon.get('nesterov', True),
          weight_dimension_numbers=dimension_numbers),
      optax.stateless(match_adamw_rms),
      # Decoupled, as AdamW's; every Muon param is a kernel.
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(schedule))


def create_optimizer(config, schedule: optax.Schedule
                     ) -> optax.GradientTransformation:
  """The optimizer named by `config.optimizer`, after gradient clipping."""
  name = config.optimizer
  if name not in OPTIMIZERS:
    raise errors.ConfigError(f'Unknown optimizer {name!r}; expected one of '
                             f'{OPTIMIZERS}.')
  dtype = jnp.dtype(config.get('optim_dtype', 'float32'))
  weight_decay = config.get('weight_decay', 0.0)
  if name == 'sgd':
    if weight_decay:
      raise errors.ConfigError(
          'weight_decay is not used with optimizer=sgd (as in '
          'vit_jax); set it to 0 or use adamw.')
    optimizer = optax.sgd(schedule, momentum=config.get('momentum', 0.9),
                          accumulator_dtype=dtype)
  elif name == 'adam':
    # Coupled L2: the decay goes through Adam's normalisation.
    optimizer = optax.chain(
        optax.add_decayed_weights(weight_decay, mask=weight_decay_mask),
        optax.scale_by_adam(b1=config.get('b1', 0.9),
                            b2=config.get('b2', 0.999), mu_dtype=dtype),
        optax.scale_by_learning_rate(schedule))
  else:
    optimizer = optax.adamw(schedule, b1=config.get('b1', 0.9),
                            b2=config.get('b2', 0.999), mu_dtype=dtype,
                            weight_decay=weight_decay, mask=weight_decay_mask)
    if name == 'muon':
      # AdamW exactly as above on what Muon leaves (embeddings, norms,
      # biases, heads), not optax.contrib.muon's own Adam: that one decays
      # every param it gets (biases and norms too) and is Nesterov's.
      conv_kernels = (config.get('muon') or {}).get('conv_kernels', True)
      optimizer = optax.partition(
          {'muon': _muon_half(config, schedule, dtype, weight_decay),
           'adam': optimizer},
          lambda params: muon_labels(params, conv_kernels))
  if config.grad_norm_clip:
    optimizer = optax.chain(optax.clip_by_global_norm(config.grad_norm_clip),
                            optimizer)
  return optimizer
