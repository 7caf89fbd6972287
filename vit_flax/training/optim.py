"""Optimisers and learning-rate schedules, built from optax.

SGD with momentum (bf16 accumulator as in vit_jax) for fine-tuning; Adam and
AdamW, with weight decay on kernels only, for training from scratch. All
start with global-norm clipping when `grad_norm_clip` > 0.
"""

import flax
import jax.numpy as jnp
import optax

from vit_flax import errors

OPTIMIZERS = ('sgd', 'adam', 'adamw')
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
  if config.grad_norm_clip:
    optimizer = optax.chain(optax.clip_by_global_norm(config.grad_norm_clip),
                            optimizer)
  return optimizer
