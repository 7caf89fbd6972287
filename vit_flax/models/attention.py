"""Self-attention: the projections and the attention functions.

`MultiHeadSelfAttention` is flax's `MultiHeadDotProductAttention` (same
params and outputs) with one q/k/v matmul; `einsum_attention` (the default)
is flax's math with a backward pass that XLA:CPU runs faster;
`fused_attention` is `jax.nn.dot_product_attention` (cuDNN flash attention
on GPUs); `locality_attention` is LSA (arXiv 2112.13492).
"""

import functools
import inspect
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_flax import errors

Dtype = Any

ATTENTION_IMPLS = (None, 'xla', 'cudnn', 'auto')
ATTENTIONS = ('mhsa', 'lsa')


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _heads_first_attention(query, key, value, multiplier, mask_diagonal):
  """softmax(q k^T) v on (batch, heads, tokens, depth) arrays, q pre-scaled;
  `multiplier` (or None) is the attention dropout's keep mask / keep_prob;
  `mask_diagonal` (static) gives each token zero weight on itself."""
  return _heads_first_attention_fwd(query, key, value, multiplier,
                                    mask_diagonal)[0]


def _heads_first_attention_fwd(query, key, value, multiplier, mask_diagonal):
  logits = jnp.einsum('bhqd,bhkd->bhqk', query, key)
  if mask_diagonal:
    # As flax masks: the dtype's most negative value, so the weight is 0.
    off_diagonal = ~jnp.eye(logits.shape[-2], logits.shape[-1], dtype=bool)
    logits = jnp.where(off_diagonal, logits, jnp.finfo(logits.dtype).min)
  weights = jax.nn.softmax(logits)
  weights = weights.astype(query.dtype)
  dropped = weights if multiplier is None else weights * multiplier
  out = jnp.einsum('bhqk,bhkd->bhqd', dropped, value)
  return out, (query, key, value, weights, multiplier)


def _heads_first_attention_bwd(mask_diagonal, residuals, d_out):
  # Written out because XLA:CPU, left to transpose the forward einsums
  # itself, picks a (depth, tokens) output layout for dK and dV whose
  # batched matmuls run at ~5 % of the CPU's matmul speed. A masked logit
  # has weight 0, so the softmax's backward below gives it no gradient, as
  # the mask's own derivative does: `mask_diagonal` needs nothing here.
  del mask_diagonal
  query, key, value, weights, multiplier = residuals
  dropped = weights if multiplier is None else weights * multiplier
  d_value = jnp.einsum('bhqk,bhqd->bhkd', dropped, d_out)
  d_weights = jnp.einsum('bhqd,bhkd->bhqk', d_out, value)
  if multiplier is not None:
    d_weights = d_weights * multiplier
  d_logits = weights * (
      d_weights - jnp.sum(d_weights * weights, axis=-1, keepdims=True))
  d_query = jnp.einsum('bhqk,bhkd->bhqd', d_logits, key)
  d_key = jnp.einsum('bhqk,bhqd->bhkd', d_logits, query)
  d_multiplier = None if multiplier is None else jnp.zeros_like(multiplier)
  return d_query, d_key, d_value, d_multiplier


_heads_first_attention.defvjp(_heads_first_attention_fwd,
                              _heads_first_attention_bwd)


def einsum_attention(query, key, value, mask=None, dropout_rng=None,
                     dropout_rate=0.0, broadcast_dropout=True,
                     deterministic=False, dtype=None, mask_diagonal=False):
  """The math of `nn.dot_product_attention` (same dropout mask for the same
  rng), as batched matmuls over (batch, heads) with a hand-written backward
  pass; the default attention (`attention_impl=None`). `mask_diagonal`
  masks each token's own key, as LSA does (in place of a `mask`)."""
  if mask is not None:
    raise NotImplementedError('einsum_attention takes no attention mask.')
  dtype = dtype or query.dtype
  query, key, value = (x.astype(dtype) for x in (query, key, value))
  # (batch, tokens, heads, depth) -> (batch, heads, tokens, depth).
  query, key, value = (jnp.swapaxes(x, -3, -2) for x in (query, key, value))
  query = query / jnp.sqrt(query.shape[-1]).astype(dtype)
  multiplier = None
  if not deterministic and dropout_rate > 0.0:
    keep_prob = 1.0 - dropout_rate
    weights_shape = query.shape[:-1] + key.shape[-2:-1]  # (b, h, q, k)
    mask_shape = ((1, 1) + weights_shape[-2:] if broadcast_dropout
                  else weights_shape)
    keep = jax.random.bernoulli(dropout_rng, keep_prob, mask_shape)
    multiplier = jnp.broadcast_to(
        keep.astype(dtype) / jnp.asarray(keep_prob, dtype), weights_shape)
  out = _heads_first_attention(query, key, value, multiplier,
                               bool(mask_diagonal))
  return jnp.swapaxes(out, -3, -2)


def fused_attention(query, key, value, mask=None, *, implementation,
                    dropout_rate=0.0, deterministic=True):
  """`jax.nn.dot_product_attention` (cuDNN flash attention on GPUs)."""
  if dropout_rate > 0.0 and not deterministic:
    raise errors.ConfigError(
        'attention_impl=%r has no attention dropout; set '
        'transformer.attention_dropout_rate=0 or attention_impl=None.'
        % implementation)
  return jax.nn.dot_product_attention(
      query, key, value, mask=mask,
      implementation=None if implementation == 'auto' else implementation)


def locality_attention(query, key, value, mask=None, dropout_rng=None,
                       dropout_rate=0.0, broadcast_dropout=True,
                       deterministic=False, dtype=None, module=None, *,
                       temperature, implementation):
  """Locality Self-Attention's attention (LSA, arXiv 2112.13492).

  Logits q.k / `temperature` (the paper's learned scalar per layer; the
  authors' code learns a multiplier per head) with the diagonal masked out
  before the softmax, so no token attends to itself. `implementation`:
  'flax' (`nn.dot_product_attention`, which sows the weights for `module`),
  None (`einsum_attention`), or 'xla' / 'auto' (`fused_attention`; cuDNN is
  refused by `vit.check_small_data_options`). The arguments before `module` are
  those `nn.MultiHeadDotProductAttention` passes.
  """
  # Every wrapped function divides the query by sqrt(depth) itself.
  scale = math.sqrt(query.shape[-1]) / temperature
  query = query * scale.astype(query.dtype)
  if implementation is None:
    return einsum_attention(query, key, value, mask, dropout_rng,
                            dropout_rate, broadcast_dropout, deterministic,
                            dtype, mask_diagonal=True)
  # (batch, heads, queries, keys), broadcast.
  off_diagonal = ~jnp.eye(query.shape[-3], key.shape[-3], dtype=bool)
  off_diagonal = off_diagonal[None, None]
  mask = off_diagonal if mask is None else jnp.logical_and(mask, off_diagonal)
  if implementation == 'flax':
    return nn.dot_product_attention(
        query, key, value, mask=mask, dropout_rng=dropout_rng,
        dropout_rate=dropout_rate, broadcast_dropout=broadcast_dropout,
        deterministic=deterministic, dtype=dtype, module=module)
  return fused_attention(query, key, value, mask, implementation=implementation,
                         dropout_rate=dropout_rate,
                         deterministic=deterministic)


class MultiHeadSelfAttention(nn.Module):
  """`nn.MultiHeadDotProductAttention` for self-attention (the same params,
  initialisation, dropout rng and outputs to float rounding), with the
  query, key and value projections as one matmul of their kernels side by
  side: on CPUs one (tokens, width) x (width, 3 width) matmul, forward and
  backward, runs faster than three of (width, width). The kernels stay
  three params (`query`, `key`, `value`), as in the released checkpoints.
  `attention_fn` takes what `nn.MultiHeadDotProductAttention` passes
  (`module=self` when sowing the weights, so they land where flax's do).
  `qkv_bias=False` drops the query, key and value biases (CCT's and timm's
  `qkv_bias=False`); the output projection keeps its bias.
  """

  num_heads: int
  dtype: Dtype = jnp.float32
  kernel_init: Callable = nn.initializers.xavier_uniform()
  dropout_rate: float = 0.0
  broadcast_dropout: bool = False
  attention_fn: Callable = nn.dot_product_attention
  qkv_bias: bool = True

  @nn.compact
  def __call__(self, x, *, deterministic: bool, sow_weights: bool = False):
    width = x.shape[-1]
    if width % self.num_heads:
      raise errors.ConfigError(
          f'The width {width} is not a multiple of num_heads '
          f'{self.num_heads}; choose a width divisible by the heads.')
    heads = (self.num_heads, width // self.num_heads)
    names = ('query', 'key', 'value')
    if self.is_initializing():
      # Each kernel initialised as flax's DenseGeneral does (same rngs).
      query, key, value = (
          nn.DenseGeneral(features=heads, dtype=self.dtype,
                          kernel_init=self.kernel_init,
                          use_bias=self.qkv_bias, name=name)(x)
          for name in names)
    else:
      params = self.variables['params']
      arrays = [jnp.stack([params[name]['kernel'] for name in names], axis=1)]
      if self.qkv_bias:
        arrays.append(jnp.stack([params[name]['bias'] for name in names]))
      x, *arrays = nn.dtypes.promote_dtype(x, *arrays, dtype=self.dtype)
      with jax.named_scope('query_key_value'):  # For profiles' op names.
        qkv = jnp.einsum('...c,cshd->...shd', x, arrays[0])
        if self.qkv_bias:
          qkv = qkv + arrays[1]
      query, key, value = (qkv[..., i, :, :] for i in range(3))
    dropout_rng = None
    if self.dropout_rate > 0.0 and not deterministic:
      dropout_rng = self.make_rng('dropout')
    kwargs = dict(dropout_rng=dropout_rng, dropout_rate=self.dropout_rate,
                  broadcast_dropout=self.broadcast_dropout,
                  deterministic=deterministic or self.dropout_rate == 0.0,
                  dtype=self.dtype)
    if sow_weights:
      kwargs['module'] = self
    # As flax does: pass only the arguments that `attention_fn` takes.
    accepted = inspect.signature(self.attention_fn).parameters
    out = self.attention_fn(query, key, value, **{
        name: arg for name, arg in kwargs.items() if name in accepted})
    return nn.DenseGeneral(features=width, axis=(-2, -1), dtype=self.dtype,
                           kernel_init=self.kernel_init, name='out')(out)
