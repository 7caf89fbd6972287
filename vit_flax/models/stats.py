"""What a model costs: parameter counts and FLOPs, without running it.

Counts come from shapes (`jax.eval_shape`: nothing is allocated) and FLOPs
from XLA's cost analysis of the compiled program, which counts a
multiply-add as 2 FLOPs and includes normalisations and softmaxes.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp

from vit_flax.models import presets


def count_params(params: Any) -> int:
  """Elements in a tree of arrays or shape structs."""
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))


def cost_flops(stage) -> float:
  """FLOPs of a lowered or compiled computation, by XLA's cost analysis."""
  cost = stage.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per program.
    cost = cost[0]
  return float((cost or {}).get('flops', 0.0))


def forward_flops(model, image_size: int, num_channels: int = 3) -> float:
  """FLOPs of one image through the jitted forward (eval) pass."""
  images = jax.ShapeDtypeStruct((1, image_size, image_size, num_channels),
                                jnp.float32)
  params = presets.abstract_params(model, image_size, num_channels)
  forward = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))
  return cost_flops(forward.lower(params, images).compile())


def config_params(config, num_classes: int) -> int:
  """Parameters of a run config's model at its image size (`pp.crop`)."""
  model = presets.create_model_for(config, num_classes)
  return count_params(presets.abstract_params(model, config.pp.crop))


def config_flops(config, num_classes: int, image_size=None) -> float:
  """FLOPs per image of a run config's model (at `pp.crop` by default)."""
  model = presets.create_model_for(config, num_classes)
  return forward_flops(model, image_size or config.pp.crop)
