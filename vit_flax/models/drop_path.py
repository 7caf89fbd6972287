"""Stochastic depth (DeiT's drop-path, arXiv 2012.12877)."""

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp


def drop_path(x, rate: float, rng):
  """Zeroes each example of `x` with probability `rate` and scales the kept
  ones by 1 / (1 - rate): stochastic depth of a residual branch."""
  keep_prob = 1.0 - rate
  keep = jax.random.bernoulli(rng, keep_prob,
                              (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype),
                   jnp.zeros_like(x))


def drop_path_rates(rate: float, num_blocks: int) -> Tuple[float, ...]:
  """DeiT's stochastic-depth schedule: 0 at the first block, rising linearly
  to `rate` at the last."""
  if num_blocks == 1:
    return (0.0,)
  return tuple(rate * (i / (num_blocks - 1)) for i in range(num_blocks))


class DropPath(nn.Module):
  """`drop_path` in training, from the 'dropout' rng stream."""

  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    return drop_path(x, self.rate, self.make_rng('dropout'))
