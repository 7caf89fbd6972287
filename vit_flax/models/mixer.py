"""MLP-Mixer (arXiv 2105.01601) in Flax, as in the official vit_jax.

Parameter names, shapes and initialisers equal those of the released `.npz`
checkpoints (gs://mixer_models/...): `stem`, `MixerBlock_{i}/{LayerNorm_0,
token_mixing, LayerNorm_1, channel_mixing}`, `pre_head_layer_norm`, `head`.
The token-mixing MLPs are sized by the number of patches, so a model (and a
checkpoint) works at one image size only.
"""

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from vit_flax import errors
from vit_flax.models import mlp


def mixer_mlp(mlp_dim: int, dtype, name: str) -> mlp.MlpBlock:
  """Dense -> GELU -> Dense back to the input width, as the official MLP.

  The ViT block with the defaults of the official Mixer: LeCun-normal
  kernels, zero biases and no dropout.
  """
  return mlp.MlpBlock(mlp_dim=mlp_dim,
                      dtype=dtype,
                      dropout_rate=0.0,
                      kernel_init=nn.initializers.lecun_normal(),
                      bias_init=nn.initializers.zeros,
                      name=name)


class MixerBlock(nn.Module):
  """x + token-mixing MLP(LN(x)) over patches, then x + channel MLP(LN(x))."""

  tokens_mlp_dim: int
  channels_mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if x.ndim != 3:
      raise ValueError(f'Expected (batch, tokens, channels), got {x.shape}.')
    # Explicit names: those of the released checkpoints.
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(x)
    y = jnp.swapaxes(y, 1, 2)  # Mix along the tokens, one channel at a time.
    y = mixer_mlp(self.tokens_mlp_dim, self.dtype, 'token_mixing')(
        y, deterministic=True)
    x = x + jnp.swapaxes(y, 1, 2)
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_1')(x)
    return x + mixer_mlp(self.channels_mlp_dim, self.dtype, 'channel_mixing')(
        y, deterministic=True)


class MlpMixer(nn.Module):
  """MLP-Mixer; `MlpMixer(num_classes=n, **config.model)`.

  The fields are those of the official configs (`Mixer-B_16`, ...) plus a
  compute `dtype`; parameters and logits stay float32.
  """

  num_classes: int
  patches: Any
  num_blocks: int
  hidden_dim: int
  tokens_mlp_dim: int
  channels_mlp_dim: int
  model_name: Optional[str] = None
  dtype: Any = 'float32'

  def check_num_tokens(self, num_tokens: int, image_shape, patch):
    """Stored token-mixing weights must fit the input's patch count."""
    stored = self.variables.get('params', {}).get('MixerBlock_0', {})
    kernel = stored.get('token_mixing', {}).get('Dense_0', {}).get('kernel')
    if kernel is not None and kernel.shape[0] != num_tokens:
      raise errors.ConfigError(
          f'This MLP-Mixer was built for {kernel.shape[0]} patches, but a '
          f'{image_shape[0]}x{image_shape[1]} image gives {num_tokens} '
          f'patches of {patch[0]}x{patch[1]}: the token-mixing MLPs are '
          'sized by the patch count, so a Mixer (and its checkpoint) works '
          'at one image size only. Use the image size it was created or '
          'pre-trained at (224 for the official checkpoints) and no '
          'resolution curriculum.')

  @nn.compact
  def __call__(self, inputs, *, train):
    del train  # The official Mixer has no dropout.
    dtype = jnp.dtype(self.dtype)
    patch = tuple(self.patches['size'])
    if inputs.shape[1] % patch[0] or inputs.shape[2] % patch[1]:
      raise errors.ConfigError(
          f'Patch size {patch} does not divide the image size '
          f'{inputs.shape[1:3]}; use an image size that is a multiple of the '
          'patch size.')
    x = nn.Conv(self.hidden_dim, patch, strides=patch, padding='VALID',
                dtype=dtype, name='stem')(inputs.astype(dtype))
    n, h, w, c = x.shape
    self.check_num_tokens(h * w, inputs.shape[1:3], patch)
    x = jnp.reshape(x, (n, h * w, c))
    for i in range(self.num_blocks):
      x = MixerBlock(self.tokens_mlp_dim, self.channels_mlp_dim, dtype=dtype,
                     name=f'MixerBlock_{i}')(x)
    x = nn.LayerNorm(dtype=dtype, name='pre_head_layer_norm')(x)
    # The logits are computed in float32 whatever the compute dtype.
    x = jnp.mean(x, axis=1).astype(jnp.float32)
    if self.num_classes:
      x = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros,
                   name='head')(x)
    return x
