"""Reading the attention of a staged ViT block by block (for the tests)."""

import dataclasses
import functools
from typing import Any, List, Sequence, Tuple

import jax

from vit_flax import errors
from vit_flax.models.staged import StagedVisionTransformer

Array = Any
GridShape = Tuple[int, int]


@dataclasses.dataclass(frozen=True)
class BlockAttention:
  """The attention weights of one block and the token layout they refer to."""

  stage: int
  block: int  # Index within the stage.
  weights: Array  # (batch, heads, query tokens, key tokens)
  grid_shape: GridShape  # The patch grid behind the prefix tokens.
  num_prefix: int  # Class tokens before the grid (0 or 1).
  cell_size: Tuple[int, int]  # Input pixels per grid cell at this stage.

  @property
  def num_tokens(self) -> int:
    return self.weights.shape[-1]


def block_attentions(model: StagedVisionTransformer, intermediates,
                     image_shape: Tuple[int, int]) -> List[BlockAttention]:
  """Every block's sown attention weights, first block to last.

  `intermediates` is the collection returned by
  `model.apply(..., sow_weights=True, mutable=['intermediates'])`.
  """
  patch = tuple(model.patches['size'])
  grids = model.grid_shapes(image_shape)
  encoder = intermediates['Transformer']
  result = []
  for s, (stage, grid) in enumerate(zip(model.stages, grids)):
    scale = 2**s if model.transition == 'pool' else 1
    for i in range(stage['num_layers']):
      block = encoder[f'stage_{s}'][f'encoderblock_{i}']
      weights = block['MultiHeadDotProductAttention_1']['attention_weights'][0]
      result.append(BlockAttention(
          stage=s, block=i, weights=weights, grid_shape=grid,
          num_prefix=model.num_prefix_tokens,
          cell_size=(patch[0] * scale, patch[1] * scale)))
  return result


def attention_weights(model: StagedVisionTransformer, params,
                      images: Array) -> List[BlockAttention]:
  """Runs `model` on `images` and returns `block_attentions` of the run."""
  apply = jax.jit(functools.partial(model.apply, train=False,
                                    sow_weights=True,
                                    mutable=['intermediates']))
  _, state = apply({'params': params}, images)
  return block_attentions(model, state['intermediates'], images.shape[1:3])


def blocks_for_rollout(blocks: Sequence[BlockAttention],
                       last_stage_only: bool = False
                       ) -> List[BlockAttention]:
  """The blocks whose attention matrices attention rollout may multiply.

  Rollout multiplies (tokens x tokens) matrices across blocks, so they all
  need the same token count. A linear transition keeps the count: every
  block qualifies. A pool transition changes it: only the blocks after the
  last pool (the last stage) do, which `last_stage_only=True` returns;
  without it, differing counts raise a UserError.
  """
  counts = [b.num_tokens for b in blocks]
  same = len(blocks)
  while same > 0 and counts[same - 1] == counts[-1]:
    same -= 1
  if same and not last_stage_only:
    raise errors.UserError(
        'Attention rollout needs one token count in every block, but the '
        f'token counts per block are {counts} (a pool transition changes '
        'the count). Roll out only the blocks after the last pool with '
        'last_stage_only=True, or use transition=linear; per-block '
        'attention maps and attention distances work for every block.')
  return list(blocks[same:])
