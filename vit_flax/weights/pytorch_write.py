"""Writing vit_flax params as timm or Hugging Face ViT / DeiT weights, and
which models those libraries cannot express.
"""

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import safetensors.numpy

from vit_flax.models import posemb as posemb_lib
from vit_flax.models import resnet as resnet_lib
from vit_flax.models import vit
from vit_flax.weights import npz
from vit_flax.weights import pytorch_layout


def _to_torch(kind: str, arrays: Sequence[np.ndarray]) -> np.ndarray:
  """The torch tensor of vit_flax `arrays` (inverse of
  `pytorch_read.to_flax`)."""
  if kind == 'copy':
    return arrays[0]
  if kind == 'conv':
    return arrays[0].transpose(3, 2, 0, 1)
  if kind == 'dense':
    return arrays[0].T
  if kind == 'qkv_kernel':
    return np.concatenate([k.reshape(k.shape[0], -1).T for k in arrays])
  if kind == 'qkv_bias':
    return np.concatenate([b.reshape(-1) for b in arrays])
  if kind == 'heads_kernel':
    return arrays[0].reshape(arrays[0].shape[0], -1).T
  if kind == 'heads_bias':
    return arrays[0].reshape(-1)
  if kind == 'out_kernel':
    return arrays[0].reshape(-1, arrays[0].shape[-1]).T
  raise ValueError(f'Unknown conversion {kind!r}.')


# Writing: vit_flax params in timm's and transformers' layouts.


def unexportable_features(
    model_type: str,
    model_config: Mapping[str, Any],
    fmt: str,
    flat: Optional[pytorch_layout.Flat] = None) -> List[str]:
  """The features of the model that the PyTorch layout `fmt` ('timm', 'hf')
  has no equivalent of, each as config field and what it is ([]: none)."""
  features = []
  if model_type != 'vit':
    return [f"model_type={model_type!r}"
            f"{' (staged widths)' if model_type == 'staged' else ''}"]
  target = {'timm': 'timm', 'hf': 'transformers'}[fmt]
  transformer = model_config.get('transformer') or {}
  if model_config.get('resnet') is not None:
    features.append('model.resnet (a hybrid ResNet root)')
  if model_config.get('locality'):
    features.append('model.locality=True (a depthwise conv in every MLP)')
  patch_embedding = model_config.get('patch_embedding', 'conv')
  if patch_embedding == 'spt':
    features.append("model.patch_embedding='spt' (Shifted Patch "
                    'Tokenization)')
  elif patch_embedding in ('cct', 'conv_stem'):
    what = {'cct': "CCT's tokenizer", 'conv_stem': 'an early-convolution stem'}
    features.append(f'model.patch_embedding={patch_embedding!r} (a conv '
                    f'tokenizer: {what[patch_embedding]})')
  if model_config.get('classifier', 'token') == 'seqpool':
    features.append("model.classifier='seqpool' (CCT's sequence pooling)")
  if not transformer.get('qkv_bias', True):
    features.append('model.transformer.qkv_bias=False (query, key and value '
                    'projections without biases)')
  if transformer.get('norm_placement', 'pre') != 'pre':
    features.append(f'model.transformer.norm_placement='
                    f"{transformer['norm_placement']!r} (CCT's block, whose "
                    'MLP residual adds to the normalised stream)')
  if transformer.get('attention', 'mhsa') == 'lsa':
    features.append("model.transformer.attention='lsa' (Locality "
                    'Self-Attention: a learned temperature and a masked '
                    'diagonal)')
  if model_config.get('representation_size') is not None:
    features.append(f'model.representation_size='
                    f"{model_config['representation_size']} (a pre_logits "
                    f'layer, which {target} ViTs do not have)')
  eps = vit.layer_norm_epsilon(model_config.get('layer_norm_eps'))
  if fmt == 'timm' and eps != vit.DEFAULT_LAYER_NORM_EPS:
    # timm's VisionTransformer builds every LayerNorm with eps 1e-6; its
    # create_model arguments cannot change that.
    features.append(f'model.layer_norm_eps={eps:g} (LayerNorm epsilon; '
                    f'timm ViTs use {vit.DEFAULT_LAYER_NORM_EPS:g})')
  if fmt == 'hf':
    classifier = model_config.get('classifier', 'token')
    if classifier not in ('token', 'token_distill', 'seqpool'):
      features.append(f'model.classifier={classifier!r} (transformers ViTs '
                      'classify the class token, DeiTs also the distillation '
                      'token)')
    if flat is not None and 'head/kernel' not in flat:
      features.append('a model without a head (num_classes=0)')
    patch = tuple(model_config['patches']['size'])
    if patch[0] != patch[1]:
      features.append(f'a non-square patch {patch}')
  return features


def vit_jax_builds(model_type: str, model_config: Mapping[str, Any]) -> bool:
  """Whether vit_jax builds this model (and so computes it from an npz):
  a plain ViT with conv patches, learned position embeddings, a token / gap
  / unpooled classifier, standard attention with q/k/v biases and pre-LN
  blocks, tanh GELU, LayerNorm epsilon 1e-6 and no locality; a hybrid root
  of any width but with vit_jax's stem, bottleneck units and GroupNorm
  groups."""
  transformer = model_config.get('transformer') or {}
  resnet = model_config.get('resnet')
  if resnet is not None and any(
      resnet.get(field, resnet_lib.HYBRID_ROOT_DEFAULTS[field]) !=
      resnet_lib.HYBRID_ROOT_DEFAULTS[field]
      for field in ('stem', 'bottleneck', 'norm_groups')):
    return False
  return (model_type == 'vit' and
          not model_config.get('locality') and
          model_config.get('patch_embedding', 'conv') == 'conv' and
          model_config.get('posemb', 'learned') == 'learned' and
          model_config.get('classifier', 'token') in (
              'token', 'gap', 'unpooled', 'token_unpooled') and
          transformer.get('attention', 'mhsa') == 'mhsa' and
          transformer.get('qkv_bias', True) and
          transformer.get('norm_placement', 'pre') == 'pre' and
          model_config.get('gelu', 'tanh') == 'tanh' and
          vit.layer_norm_epsilon(model_config.get('layer_norm_eps')) ==
          vit.DEFAULT_LAYER_NORM_EPS)


def npz_readers(model_type: str, model_config: Mapping[str, Any]) -> str:
  """Who reads this model's npz export, for messages."""
  return ('vit_flax and vit_jax read it' if vit_jax_builds(
      model_type, model_config) else 'vit_flax reads it')


def no_equivalent(features: Sequence[str], target: str) -> str:
  """'X has no timm equivalent' / 'X; Y have no timm equivalent'."""
  verb = 'has' if len(features) == 1 else 'have'
  return f'{"; ".join(features)} {verb} no {target} equivalent'


def _check_exportable(flat: pytorch_layout.Flat, model_type: str,
                      model_config: Mapping[str, Any], fmt: str) -> None:
  """A model that `fmt` cannot express is an error naming the feature."""
  features = unexportable_features(model_type, model_config, fmt, flat)
  if features:
    target = {'timm': 'timm', 'hf': 'Hugging Face transformers'}[fmt]
    option = {'timm': 'safetensors', 'hf': 'hf'}[fmt]
    raise pytorch_layout.PyTorchWeightsError(
        f'{no_equivalent(features, target)}, so this model cannot be '
        f'exported for {target} (--format={option}). Export it with '
        '--format=npz instead; '
        f'{npz_readers(model_type, model_config)}.')


def _grid_side(posemb: np.ndarray, num_prefix: int) -> int:
  grid = posemb.shape[1] - num_prefix
  side = math.isqrt(grid)
  if side * side != grid:
    raise pytorch_layout.PyTorchWeightsError(
        f'The position embeddings hold a grid of {grid} tokens, not a '
        'square: timm and transformers describe square images only.')
  return side


def posemb_feature(model_config: Mapping[str, Any]) -> str:
  """What gives a ViT without learned position embeddings none, for
  messages."""
  if model_config.get('posemb', 'learned') == 'sincos2d':
    return "model.posemb='sincos2d'"
  return 'model.transformer.add_position_embedding=False'


def _with_posemb_table(flat: pytorch_layout.Flat, model_config: Mapping[str,
                                                                        Any],
                       image_size: Optional[int]) -> pytorch_layout.Flat:
  """`flat` with the position-embedding table that timm and transformers
  add to the tokens (`pos_embed`, `position_embeddings`).

  A learned table is there already. `posemb='sincos2d'` has none: its table
  is computed for the grid of `image_size` as `posemb_lib.add_sincos_posemb`
  adds it, row-major over the patches, zeros on the prefix tokens (class,
  distillation) that timm's and transformers' tables also cover. Without
  position embeddings (transformer.add_position_embedding=False) the table
  is zeros.
  """
  if pytorch_layout.POSEMB in flat:
    return flat
  sincos = model_config.get('posemb', 'learned') == 'sincos2d'
  patch = tuple(int(p) for p in model_config['patches']['size'])
  if image_size is None or image_size % patch[0] or image_size % patch[1]:
    raise pytorch_layout.PyTorchWeightsError(
        f'{posemb_feature(model_config)} has no position-embedding table to '
        'copy, and timm and transformers need one, for one image size: it '
        f'is computed here for image_size={image_size}; give an image size '
        f'that patch size {patch} divides (vit_flax.export takes '
        'config.pp.crop).')
  grid = (image_size // patch[0], image_size // patch[1])
  hidden = int(flat['embedding/kernel'].shape[-1])
  num_prefix = sum(name in flat for name in vit.PREFIX_TOKEN_NAMES)
  table = (posemb_lib.posemb_sincos_2d(grid, hidden) if sincos else
           np.zeros((grid[0] * grid[1], hidden), np.float32))
  table = np.concatenate([np.zeros((num_prefix, hidden), np.float32), table])
  return {**flat, pytorch_layout.POSEMB: table[None]}


def _from_flax(flat: pytorch_layout.Flat,
               entries: Sequence[pytorch_layout.Entry],
               fmt: str) -> Dict[str, np.ndarray]:
  covered = {k for e in entries for k in e.flax_keys}
  unknown = sorted(set(flat) - covered)
  if unknown:
    raise pytorch_layout.PyTorchWeightsError(
        f'The params have {len(unknown)} keys that the {fmt} layout has no '
        f'place for: {pytorch_layout.listing(unknown)}.')
  state = {}
  for entry in entries:
    if all(k in flat for k in entry.flax_keys):
      arrays = [np.asarray(flat[k]) for k in entry.flax_keys]
      state[entry.torch_key] = np.ascontiguousarray(
          _to_torch(entry.kind, arrays))
  return state


def _flat_numpy(params) -> pytorch_layout.Flat:
  flat = npz.flatten(params)
  return {k: np.asarray(v) for k, v in flat.items()
          if not (isinstance(v, dict) and not v)}


def timm_model_args(params, model_config: Mapping[str, Any],
                    model_type: str = 'vit',
                    image_size: Optional[int] = None) -> Dict[str, Any]:
  """timm `create_model` keyword arguments of the same model.

  With these, timm computes the logits of vit_flax (up to float rounding):
  `fc_norm=False` keeps the final norm before the pooling of a gap model
  (timm's default for global_pool='avg' would norm after it), and
  `act_layer='gelu_tanh'` is the official ViT's GELU ('gelu': exact). A
  distilled model ('token_distill') is timm's `VisionTransformerDistilled`
  (`timm_base_name`), which pools with 'token' and averages its two heads.
  `image_size` is needed for `posemb='sincos2d'` (see `to_timm`).
  """
  flat = _flat_numpy(params)
  _check_exportable(flat, model_type, model_config, 'timm')
  flat = _with_posemb_table(flat, model_config, image_size)
  hidden = int(flat['embedding/kernel'].shape[-1])
  mlp_dim = int(model_config['transformer']['mlp_dim'])
  mlp_ratio = mlp_dim / hidden
  if int(hidden * mlp_ratio) != mlp_dim:
    raise pytorch_layout.PyTorchWeightsError(
        f'timm cannot express mlp_dim={mlp_dim} at width {hidden}: its MLP '
        'width is int(embed_dim * mlp_ratio).')
  classifier = model_config.get('classifier', 'token')
  class_token = 'cls' in flat
  num_prefix = int(class_token) + int('dist' in flat)
  patch = tuple(int(p) for p in model_config['patches']['size'])
  side = _grid_side(flat[pytorch_layout.POSEMB], num_prefix)
  args = {
      'img_size': side * patch[0] if patch[0] == patch[1] else (
          side * patch[0], side * patch[1]),
      'patch_size': patch[0] if patch[0] == patch[1] else patch,
      'in_chans': int(flat['embedding/kernel'].shape[2]),
      'num_classes': int(flat['head/bias'].shape[0]) if 'head/bias' in flat
                     else 0,
      'embed_dim': hidden,
      'depth': int(model_config['transformer']['num_layers']),
      'num_heads': int(model_config['transformer']['num_heads']),
      'mlp_ratio': mlp_ratio,
      'class_token': class_token,
      'global_pool': {'token': 'token', 'gap': 'avg', 'unpooled': '',
                      'token_unpooled': '', 'token_distill': 'token'
                      }[classifier],
  }
  if classifier == 'gap':
    args['fc_norm'] = False
  # Explicit even for timm's default, so that the file says what it is.
  args['act_layer'] = {'tanh': 'gelu_tanh', 'exact': 'gelu'}[
      model_config.get('gelu', 'tanh')]
  return args


def timm_base_name(params) -> str:
  """A timm model name to pass with `timm_model_args` (they override it)."""
  if 'dist' in npz.flatten(params):
    return 'deit_base_distilled_patch16_224'
  return 'vit_base_patch16_224'


def to_timm(params, model_config: Mapping[str, Any],
            model_type: str = 'vit', image_size: Optional[int] = None
            ) -> Dict[str, np.ndarray]:
  """The timm state dict of vit_flax `params`.

  A model without learned position embeddings (`posemb='sincos2d'`) gets
  the table it adds for `image_size` images as `pos_embed`: timm then
  computes the same at that size.
  """
  flat = _flat_numpy(params)
  _check_exportable(flat, model_type, model_config, 'timm')
  flat = _with_posemb_table(flat, model_config, image_size)
  num_layers = int(model_config['transformer']['num_layers'])
  return _from_flax(flat, pytorch_layout.timm_entries(num_layers), 'timm')


def to_hf(params, model_config: Mapping[str, Any], model_type: str = 'vit',
          image_size: Optional[int] = None
          ) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
  """(transformers state dict, its config.json) of vit_flax `params`.

  A ViT becomes a `ViTForImageClassification`; one with a distillation
  token a `DeiTForImageClassificationWithTeacher`. `image_size` as for
  `to_timm`.
  """
  flat = _flat_numpy(params)
  _check_exportable(flat, model_type, model_config, 'hf')
  flat = _with_posemb_table(flat, model_config, image_size)
  distilled = 'dist' in flat
  num_layers = int(model_config['transformer']['num_layers'])
  entries = pytorch_layout.hf_entries(num_layers,
                                      'deit.' if distilled else 'vit.',
                                      distilled_heads=distilled)
  state = _from_flax(flat, entries, 'hf')
  patch = int(model_config['patches']['size'][0])
  side = _grid_side(flat[pytorch_layout.POSEMB], 1 + int(distilled))
  num_classes = int(flat['head/bias'].shape[0])
  gelu = model_config.get('gelu', 'tanh')
  config = {
      'architectures': ['DeiTForImageClassificationWithTeacher' if distilled
                        else 'ViTForImageClassification'],
      'model_type': 'deit' if distilled else 'vit',
      'hidden_size': int(flat['embedding/kernel'].shape[-1]),
      'num_hidden_layers': num_layers,
      'num_attention_heads': int(model_config['transformer']['num_heads']),
      'intermediate_size': int(model_config['transformer']['mlp_dim']),
      'hidden_act': 'gelu' if gelu == 'exact' else 'gelu_pytorch_tanh',
      'hidden_dropout_prob': 0.0,
      'attention_probs_dropout_prob': 0.0,
      'initializer_range': 0.02,
      'layer_norm_eps': vit.layer_norm_epsilon(
          model_config.get('layer_norm_eps')),
      'image_size': side * patch,
      'patch_size': patch,
      'num_channels': int(flat['embedding/kernel'].shape[2]),
      'qkv_bias': True,
      'encoder_stride': patch,
      'id2label': {str(i): f'LABEL_{i}' for i in range(num_classes)},
      'label2id': {f'LABEL_{i}': i for i in range(num_classes)},
  }
  return state, config


def safetensors_bytes(state: Mapping[str, np.ndarray],
                      metadata: Optional[Mapping[str, str]] = None) -> bytes:
  """A safetensors file of `state`; 'format': 'pt' as torch writers say."""
  return safetensors.numpy.save(
      {k: np.ascontiguousarray(v) for k, v in state.items()},
      metadata={'format': 'pt', **(metadata or {})})
