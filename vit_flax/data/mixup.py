"""Mixup and CutMix of a batch on the device, inside the jitted train step.

Follows the semantics of timm's `timm.data.Mixup`: example i is mixed with
example b - 1 - i (its partner in the flipped batch). Mixup blends the two
images with a weight lam ~ Beta(mixup_alpha, mixup_alpha); CutMix pastes a
box of the partner into the image, its side sqrt(1 - lam) of the image's
with lam ~ Beta(cutmix_alpha, cutmix_alpha), its centre uniform and the box
clipped at the borders, and then takes lam as the area left outside the box.
The targets are lam * smooth(onehot(y_i)) + (1 - lam) * smooth(onehot(y_b-1-i)).

Everything has static shapes and is plain jnp: with the batch sharded over
devices, XLA moves the partners' rows where they are needed (the partner of
a row on the first device is on the last one; timm under DDP flips each
process's part of the batch instead).
"""

import dataclasses
import math
import numbers
from typing import Any, Dict

import flax
import jax
import jax.numpy as jnp
import optax

from vit_flax import errors

# 'batch': one draw (mixed or not, mixup or CutMix, lam, box) for the whole
# batch, timm's default; 'elem': one draw per example.
MODES = ('batch', 'elem')

# MixOptions field -> (config field, value when absent).
CONFIG_FIELDS = {
    'mixup_alpha': ('mixup', 0.0),
    'cutmix_alpha': ('cutmix', 0.0),
    'prob': ('mix_prob', 1.0),
    'switch_prob': ('mix_switch_prob', 0.5),
    'mode': ('mix_mode', 'batch'),
    'label_smoothing': ('label_smoothing', 0.0),
}


def _is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _validate(values: Dict[str, Any], names: Dict[str, str]):
  """Raises a ConfigError on the first value of `values` that cannot work.

  Args:
    values: MixOptions field -> value.
    names: MixOptions field -> the name to show in the message.
  """
  for field in ('mixup_alpha', 'cutmix_alpha'):
    value = values[field]
    if not (_is_number(value) and math.isfinite(value) and value >= 0):
      raise errors.ConfigError(
          f'{names[field]}={value!r} must be a finite number >= 0: the '
          'alpha of the Beta(alpha, alpha) distribution that lam is drawn '
          'from, and 0 turns this kind of mixing off (e.g. 0.8 for mixup '
          'and 1.0 for CutMix, as in DeiT).')
  for field, meaning in (
      ('prob', 'the probability of mixing a batch (an example in mode '
       "'elem') at all"),
      ('switch_prob', 'the probability of CutMix instead of mixup when both '
       'alphas are > 0'),
      ('label_smoothing', 'the label smoothing of the targets')):
    value = values[field]
    if not (_is_number(value) and 0 <= value <= 1):
      raise errors.ConfigError(
          f'{names[field]}={value!r} must be a number in [0, 1] ({meaning}).')
  if values['mode'] not in MODES:
    raise errors.ConfigError(
        f'{names["mode"]}={values["mode"]!r} is not a mixing mode; expected '
        f"one of {MODES} ('batch': one lam and one mixup-or-CutMix choice "
        "per batch; 'elem': one per example).")


@dataclasses.dataclass(frozen=True)
class MixOptions:
  """How to mix a batch; hashable, so it can be a static jit argument.

  Attributes:
    mixup_alpha: Beta(alpha, alpha) of mixup's lam; 0 turns mixup off.
    cutmix_alpha: Beta(alpha, alpha) of CutMix's lam; 0 turns CutMix off.
    prob: probability of mixing a batch ('batch') or an example ('elem').
    switch_prob: probability of CutMix instead of mixup when both alphas
      are > 0.
    mode: one of MODES.
    label_smoothing: optax label smoothing of both one-hot targets.
  """
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  prob: float = 1.0
  switch_prob: float = 0.5
  mode: str = 'batch'
  label_smoothing: float = 0.0

  def __post_init__(self):
    values = dataclasses.asdict(self)
    _validate(values, {field: field for field in values})

  @property
  def enabled(self) -> bool:
    """Whether any batch can be mixed at all."""
    return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0


def options_from_config(config) -> MixOptions:
  """MixOptions from `config.mixup`, `config.cutmix`, `config.mix_prob`,
  `config.mix_switch_prob`, `config.mix_mode` and `config.label_smoothing`.

  Absent (or None) fields take the defaults of MixOptions: no mixing.

  Raises:
    ConfigError: naming the config field of a value that cannot work.
  """
  values = {}
  for field, (name, default) in CONFIG_FIELDS.items():
    value = config.get(name, default)
    values[field] = default if value is None else value
  _validate(values, {field: f'config.{name}'
                     for field, (name, _) in CONFIG_FIELDS.items()})
  return MixOptions(**values)


@flax.struct.dataclass
class Mixed:
  """A mixed batch.

  Attributes:
    images: (b, h, w, c), like the input images.
    targets: (b, num_classes) float32 soft targets; each row sums to 1.
    labels: (b,) the input labels.
    partner_labels: (b,) the labels of each example's partner, b - 1 - i.
    weight: (b,) float32, the weight of `labels` in `targets` (lam; 1 where
      nothing was mixed).
  """
  images: jax.Array
  targets: jax.Array
  labels: jax.Array
  partner_labels: jax.Array
  weight: jax.Array


def _beta_pairs(rng, alphas, n: int):
  """n draws of Beta(alpha, alpha) for each alpha > 0 of `alphas` (None for
  the others), from one Gamma sampler: compiling each sampler takes seconds.

  Beta(a, a) = G1 / (G1 + G2) with G1, G2 ~ Gamma(a), taken in log space (as
  `jax.random.beta` does) so that small alphas do not underflow to 0 / 0.
  """
  used = [alpha for alpha in alphas if alpha > 0]
  concentration = jnp.repeat(jnp.array(used, jnp.float32), 2 * n)
  log_gamma = jax.random.loggamma(rng, concentration).reshape(len(used), 2, n)
  log_gamma -= log_gamma.max(1, keepdims=True)
  gamma = jnp.exp(log_gamma)
  lams = iter(gamma[:, 0] / (gamma[:, 0] + gamma[:, 1]))
  return [next(lams) if alpha > 0 else None for alpha in alphas]


def _cutmix_boxes(rng, lam, height: int, width: int):
  """`rand_bbox`-like boxes, one per entry of `lam`.

  Returns:
    (in_box, lam): in_box (n, height, width) bool, True inside the box; lam
    (n,) corrected to 1 - the box's clipped area / the image's.
  """
  ratio = jnp.sqrt(1.0 - lam)
  rng_y, rng_x = jax.random.split(rng)
  n = lam.shape[0]

  def extent(rng, size):
    cut = jnp.floor(size * ratio).astype(jnp.int32)
    centre = jax.random.randint(rng, (n,), 0, size)
    low = jnp.clip(centre - cut // 2, 0, size)
    high = jnp.clip(centre + cut // 2, 0, size)
    return low, high

  y_low, y_high = extent(rng_y, height)
  x_low, x_high = extent(rng_x, width)
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  in_box = ((rows >= y_low[:, None, None]) & (rows < y_high[:, None, None]) &
            (cols >= x_low[:, None, None]) & (cols < x_high[:, None, None]))
  area = (y_high - y_low) * (x_high - x_low)
  return in_box, 1.0 - area / (height * width)


def mix_batch(rng, images, labels, num_classes: int,
              options: MixOptions) -> Mixed:
  """Mixes a batch with its flipped self by mixup or CutMix (see module doc).

  Jittable with `num_classes` and `options` static. An odd batch's middle
  example is its own partner, so it is left as it is.

  Args:
    rng: a PRNG key; the same key gives the same mixing.
    images: (b, h, w, c) floating point.
    labels: (b,) integer class indices.
    num_classes: the width of the targets.
    options: how to mix; with `options.enabled` False nothing is mixed.

  Returns:
    The Mixed batch. Where a batch or example is not mixed, its images are
    unchanged and its weight is 1.
  """
  if images.ndim != 4 or labels.shape != images.shape[:1]:
    raise ValueError(f'images {images.shape} must be (b, h, w, c) and labels '
                     f'{labels.shape} (b,).')
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f'images must be floating point to be mixed, not '
                     f'{images.dtype}.')
  batch, height, width, _ = images.shape
  partner_labels = labels[::-1]

  def smooth(y):
    return optax.smooth_labels(jax.nn.one_hot(y, num_classes),
                               options.label_smoothing)

  if not options.enabled:
    return Mixed(images=images, targets=smooth(labels), labels=labels,
                 partner_labels=partner_labels,
                 weight=jnp.ones((batch,), jnp.float32))

  draws = 1 if options.mode == 'batch' else batch
  rng_mix, rng_switch, rng_lam, rng_box = jax.random.split(rng, 4)
  mixed = jax.random.uniform(rng_mix, (draws,)) < options.prob
  if options.mixup_alpha > 0 and options.cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(rng_switch, (draws,)) < options.switch_prob
  else:
    use_cutmix = jnp.full((draws,), options.cutmix_alpha > 0)

  mixup_lam, cutmix_lam = _beta_pairs(
      rng_lam, (options.mixup_alpha, options.cutmix_alpha), draws)
  # Per draw: the weight of the example's own pixels, (draws, h or 1, w or 1),
  # and of its own label, (draws,). 1 where not mixed.
  pixel_weight = jnp.ones((draws, 1, 1))
  weight = jnp.ones((draws,))
  if options.mixup_alpha > 0:
    pixel_weight = mixup_lam[:, None, None]
    weight = mixup_lam
  if options.cutmix_alpha > 0:
    in_box, box_lam = _cutmix_boxes(rng_box, cutmix_lam, height, width)
    pixel_weight = jnp.where(use_cutmix[:, None, None], (~in_box) * 1.0,
                             pixel_weight)
    weight = jnp.where(use_cutmix, box_lam, weight)
  pixel_weight = jnp.where(mixed[:, None, None], pixel_weight, 1.0)
  weight = jnp.broadcast_to(jnp.where(mixed, weight, 1.0), (batch,))

  # w * x + (1 - w) * partner is exact at w = 1 (unmixed, outside a box) and
  # at w = 0 (inside a box).
  pixel_weight = pixel_weight[..., None].astype(images.dtype)
  images = pixel_weight * images + (1 - pixel_weight) * images[::-1]
  targets = (weight[:, None] * smooth(labels) +
             (1 - weight[:, None]) * smooth(partner_labels))
  return Mixed(images=images, targets=targets, labels=labels,
               partner_labels=partner_labels, weight=weight)


def soft_cross_entropy(logits, targets):
  """Per-example cross entropy against soft `targets` (b, num_classes)."""
  return optax.softmax_cross_entropy(logits, targets)


def mixed_accuracy(logits, mixed: Mixed):
  """The train accuracy of a mixed batch (how train accuracy is defined).

  A prediction counts `weight` if it is the example's own label and
  `1 - weight` if it is its partner's, averaged over the batch: the plain
  accuracy where nothing is mixed.
  """
  predicted = jnp.argmax(logits, -1)
  correct = (mixed.weight * (predicted == mixed.labels) +
             (1 - mixed.weight) * (predicted == mixed.partner_labels))
  return jnp.mean(correct)
