"""Where each tensor of a timm or Hugging Face ViT / DeiT state dict goes in
vit_flax's params: the name layouts both readers and writers use.

PyTorch projects store the same ViT under two layouts of names:

- timm (`timm.models.vision_transformer`, `deit`): `patch_embed.proj`,
  `cls_token`, `pos_embed`, `blocks.{i}.attn.qkv` (query, key and value in
  one matrix), `blocks.{i}.mlp.fc1`, `norm`, `head`; distilled DeiTs add
  `dist_token` and `head_dist`.
- Hugging Face transformers (`ViTForImageClassification`, `ViTModel`,
  `DeiTForImageClassification[WithTeacher]`): `{vit,deit}.embeddings...`,
  `encoder.layer.{i}.attention.attention.{query,key,value}`, `layernorm`,
  `classifier` (`cls_classifier` and `distillation_classifier` for DeiT
  with its teacher's head), beside a `config.json` that gives the sizes.

vit_flax's side: query/key/value kernels of shape (hidden, heads,
head_dim), biases (heads, head_dim), the `out` kernel (heads, head_dim,
hidden), HWIO conv kernels, and the DeiT distillation token and head as
`dist` and `head_dist`.
"""

import dataclasses
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from vit_flax import errors

Params = Dict[str, Any]
Flat = Dict[str, np.ndarray]

LAYOUTS = ('timm', 'hf')
# Key of the safetensors metadata where `vit_flax.export` writes the timm
# `create_model` arguments of the file.
TIMM_ARGS_METADATA = 'vit_flax.timm_model_args'

POSEMB = 'Transformer/posembed_input/pos_embedding'
_ATTENTION = 'MultiHeadDotProductAttention_1'
_QKV = ('query', 'key', 'value')


class PyTorchWeightsError(errors.CheckpointError):
  """A timm / Hugging Face checkpoint that cannot be read or converted."""


# Where each tensor goes: (torch key, vit_flax keys, conversion, group).
# Entries of a non-empty group are optional together (a head, a token).
@dataclasses.dataclass(frozen=True)
class Entry:
  torch_key: str
  flax_keys: Tuple[str, ...]
  kind: str
  group: str = ''


def _block_entries(torch_prefix: str, flax_prefix: str,
                   names: Mapping[str, str], fused_qkv: bool) -> List[Entry]:
  """One encoder block; `names` maps vit_flax sublayers to torch names."""
  attention = f'{flax_prefix}{_ATTENTION}/'
  entries = []
  for flax_name, kind in (('LayerNorm_0', 'copy'), ('LayerNorm_2', 'copy'),
                          ('MlpBlock_3/Dense_0', 'dense'),
                          ('MlpBlock_3/Dense_1', 'dense')):
    torch_name = torch_prefix + names[flax_name]
    flax_name = flax_prefix + flax_name
    weight = 'scale' if kind == 'copy' else 'kernel'
    entries.append(
        Entry(f'{torch_name}.weight', (f'{flax_name}/{weight}',), kind))
    entries.append(Entry(f'{torch_name}.bias', (f'{flax_name}/bias',), 'copy'))
  if fused_qkv:
    qkv = torch_prefix + names['qkv']
    entries.append(Entry(f'{qkv}.weight', tuple(
        f'{attention}{n}/kernel' for n in _QKV), 'qkv_kernel'))
    entries.append(Entry(f'{qkv}.bias', tuple(
        f'{attention}{n}/bias' for n in _QKV), 'qkv_bias'))
  else:
    for n in _QKV:
      torch_name = torch_prefix + names[n]
      entries.append(
          Entry(f'{torch_name}.weight', (f'{attention}{n}/kernel',),
                'heads_kernel'))
      entries.append(
          Entry(f'{torch_name}.bias', (f'{attention}{n}/bias',), 'heads_bias'))
  out = torch_prefix + names['out']
  entries.append(
      Entry(f'{out}.weight', (f'{attention}out/kernel',), 'out_kernel'))
  entries.append(Entry(f'{out}.bias', (f'{attention}out/bias',), 'copy'))
  return entries


_TIMM_BLOCK = {'LayerNorm_0': 'norm1', 'LayerNorm_2': 'norm2',
               'MlpBlock_3/Dense_0': 'mlp.fc1',
               'MlpBlock_3/Dense_1': 'mlp.fc2', 'qkv': 'attn.qkv',
               'out': 'attn.proj'}
_HF_BLOCK = {'LayerNorm_0': 'layernorm_before',
             'LayerNorm_2': 'layernorm_after',
             'MlpBlock_3/Dense_0': 'intermediate.dense',
             'MlpBlock_3/Dense_1': 'output.dense',
             'query': 'attention.attention.query',
             'key': 'attention.attention.key',
             'value': 'attention.attention.value',
             'out': 'attention.output.dense'}


def _dense(torch_name: str, flax_name: str, group: str) -> List[Entry]:
  return [
      Entry(f'{torch_name}.weight', (f'{flax_name}/kernel',), 'dense', group),
      Entry(f'{torch_name}.bias', (f'{flax_name}/bias',), 'copy', group)
  ]


def timm_entries(num_layers: int) -> List[Entry]:
  """The timm state dict of a ViT / DeiT with `num_layers` blocks."""
  entries = [
      Entry('cls_token', ('cls',), 'copy', 'cls'),
      Entry('dist_token', ('dist',), 'copy', 'dist'),
      Entry('pos_embed', (POSEMB,), 'copy'),
      Entry('patch_embed.proj.weight', ('embedding/kernel',), 'conv'),
      Entry('patch_embed.proj.bias', ('embedding/bias',), 'copy'),
      Entry('norm.weight', ('Transformer/encoder_norm/scale',), 'copy'),
      Entry('norm.bias', ('Transformer/encoder_norm/bias',), 'copy'),
  ]
  entries += _dense('pre_logits.fc', 'pre_logits', 'pre_logits')
  entries += _dense('head', 'head', 'head')
  entries += _dense('head_dist', 'head_dist', 'head_dist')
  for i in range(num_layers):
    entries += _block_entries(f'blocks.{i}.',
                              f'Transformer/encoderblock_{i}/', _TIMM_BLOCK,
                              fused_qkv=True)
  return entries


def hf_entries(num_layers: int, prefix: str, distilled_heads: bool
               ) -> List[Entry]:
  """The transformers state dict; `prefix` is 'vit.', 'deit.' or ''."""
  embeddings = f'{prefix}embeddings.'
  entries = [
      Entry(f'{embeddings}cls_token', ('cls',), 'copy', 'cls'),
      Entry(f'{embeddings}distillation_token', ('dist',), 'copy', 'dist'),
      Entry(f'{embeddings}position_embeddings', (POSEMB,), 'copy'),
      Entry(f'{embeddings}patch_embeddings.projection.weight',
            ('embedding/kernel',), 'conv'),
      Entry(f'{embeddings}patch_embeddings.projection.bias',
            ('embedding/bias',), 'copy'),
      Entry(f'{prefix}layernorm.weight', ('Transformer/encoder_norm/scale',),
            'copy'),
      Entry(f'{prefix}layernorm.bias', ('Transformer/encoder_norm/bias',),
            'copy'),
  ]
  entries += _dense(f'{prefix}pooler.dense', 'pre_logits', 'pre_logits')
  if distilled_heads:
    entries += _dense('cls_classifier', 'head', 'head')
    entries += _dense('distillation_classifier', 'head_dist', 'head_dist')
  else:
    entries += _dense('classifier', 'head', 'head')
  for i in range(num_layers):
    entries += _block_entries(f'{prefix}encoder.layer.{i}.',
                              f'Transformer/encoderblock_{i}/', _HF_BLOCK,
                              fused_qkv=False)
  return entries


def listing(keys: Sequence[str], limit: int = 8) -> str:
  more = f' and {len(keys) - limit} more' if len(keys) > limit else ''
  return ', '.join(keys[:limit]) + more
