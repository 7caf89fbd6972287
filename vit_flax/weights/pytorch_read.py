"""Reading timm and Hugging Face ViT / DeiT weights into vit_flax params.

A timm state dict holds no config: the shapes give the sizes, the head
count comes from a timm `config.json` beside the file (`model_args`), from
what `vit_flax.export` wrote into the file, or from the model config in
use. Hugging Face folders carry a `config.json` that gives the sizes. Both
hubs name their files `model.safetensors`, so the layout is told by the
keys. `.safetensors` files are read with `safetensors.numpy` (no torch);
`.pth` / `.bin` / `.pt` pickles need torch.
"""

import dataclasses
import io
import json
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging
from etils import epath
import ml_dtypes
import numpy as np
import safetensors.numpy

from vit_flax.models import vit
from vit_flax.weights import npz
from vit_flax.weights import pytorch_layout

PICKLE_SUFFIXES = ('.pth', '.bin', '.pt')
SUFFIXES = ('.safetensors',) + PICKLE_SUFFIXES
# Files of a Hugging Face (or timm hub) model folder, in order of preference.
FOLDER_FILES = ('model.safetensors', 'model.safetensors.index.json',
                'pytorch_model.bin')
HF_MODEL_TYPES = ('vit', 'deit')
# transformers' `hidden_act` names -> vit_flax's `gelu`.
HF_GELUS = {'gelu': 'exact', 'gelu_pytorch_tanh': 'tanh', 'gelu_new': 'tanh'}
# timm's `act_layer` names -> vit_flax's `gelu`.
TIMM_GELUS = {'gelu': 'exact', 'gelu_tanh': 'tanh'}

# Keys of features vit_flax's ViT does not have, and what they are.
_FEATURES = (
    (r'(^|\.)fc_norm\.', "fc_norm (timm's LayerNorm after average pooling, "
     "its default for global_pool='avg'; vit_flax's gap model normalises "
     'each token before pooling, as timm with fc_norm=False)'),
    (r'\.ls[12]\.', 'layer scale (timm init_values)'),
    (r'(^|\.)reg_token$', 'register tokens (timm reg_tokens)'),
    (r'(^|\.)norm_pre\.', 'a LayerNorm before the blocks (timm pre_norm)'),
    (r'\.(q_norm|k_norm)\.', 'QK normalisation (timm qk_norm)'),
    (r'(^|\.)attn_pool\.', "attention pooling (timm global_pool='map')"),
    (r'(^|\.)mask_token$', 'a mask token (masked image modelling)'),
    (r'(^|\.)decoder\.', 'a masked-image-modelling decoder'),
    (r'patch_embed\.backbone\.', 'a hybrid ResNet backbone'),
)


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What a checkpoint's config and shapes say about its model."""

  layout: str  # 'timm' or 'hf'
  hidden_size: int
  num_layers: int
  mlp_dim: int
  patch_size: Tuple[int, int]
  num_heads: Optional[int]  # None: the file does not say.
  class_token: bool
  distilled: bool  # DeiT's distillation token (`dist`, `head_dist`).
  classifier: Optional[str]  # None: the file does not say how it pools.
  gelu: str  # 'exact' or 'tanh'
  gelu_source: str  # Where `gelu` comes from, for messages.
  gelu_stated: bool  # False: the library's default, no config says.
  num_classes: int  # 0 without a head.
  representation_size: Optional[int]
  num_tokens: int  # Of the position embeddings.
  layer_norm_eps: Optional[float] = None


# Conversions between torch and vit_flax layouts.


def to_flax(kind: str, x: np.ndarray, num_heads: Optional[int],
            key: str) -> List[np.ndarray]:
  """The vit_flax arrays of torch tensor `x`."""
  if kind == 'copy':
    return [x]
  if kind == 'conv':  # (out, in, h, w) -> (h, w, in, out)
    _expect_ndim(x, 4, key)
    return [x.transpose(2, 3, 1, 0)]
  if kind == 'dense':  # (out, in) -> (in, out)
    _expect_ndim(x, 2, key)
    return [x.T]
  heads = _check_heads(x, key, num_heads, kind)
  if kind == 'qkv_kernel':  # (3 * hidden, hidden)
    return [w.T.reshape(x.shape[1], heads, -1) for w in
            np.split(x, 3, axis=0)]
  if kind == 'qkv_bias':
    return [b.reshape(heads, -1) for b in np.split(x, 3)]
  if kind == 'heads_kernel':  # (heads * head_dim, hidden)
    return [x.T.reshape(x.shape[1], heads, -1)]
  if kind == 'heads_bias':
    return [x.reshape(heads, -1)]
  if kind == 'out_kernel':  # (hidden, heads * head_dim)
    return [x.T.reshape(heads, -1, x.shape[0])]
  raise ValueError(f'Unknown conversion {kind!r}.')


def _expect_ndim(x, ndim: int, key: str):
  if x.ndim != ndim:
    raise pytorch_layout.PyTorchWeightsError(
        f'Tensor {key} has shape {tuple(x.shape)}; a ViT checkpoint has '
        f'{ndim} dimensions there.')


def _check_heads(x: np.ndarray, key: str, num_heads: Optional[int],
                 kind: str) -> int:
  """`num_heads`, once known to split the attention tensor `x`."""
  if num_heads is None:
    raise pytorch_layout.PyTorchWeightsError(
        f'The number of attention heads is needed to split {key} but the '
        'checkpoint does not give it; pass num_heads (load_pretrained takes '
        'it from config.model.transformer.num_heads).')
  _expect_ndim(x, 1 if kind.endswith('bias') else 2, key)
  fused = kind.startswith('qkv')
  width = x.shape[1] if kind == 'out_kernel' else x.shape[0] // (
      3 if fused else 1)
  if (fused and x.shape[0] % 3) or width % num_heads:
    raise pytorch_layout.PyTorchWeightsError(
        f'Tensor {key} of shape {tuple(x.shape)} does not split into '
        f'{"3 x " if fused else ""}{num_heads} heads.')
  return num_heads


# Reading files.


def is_pytorch_checkpoint(path) -> bool:
  """Whether `path` is a timm / HF file or folder (not a vit_jax `.npz`)."""
  path = epath.Path(path)
  if path.is_dir():
    return True
  if path.suffix in SUFFIXES:
    return True
  if path.suffix == '.npz' or not path.exists():
    return False
  return _sniff(path) is not None


def _sniff(path: epath.Path) -> Optional[str]:
  """'safetensors' or 'pickle' from the first bytes, for unknown suffixes."""
  with path.open('rb') as f:
    head = f.read(4096)
  if len(head) > 9 and head[8:10] == b'{"':
    return 'safetensors'
  if head[:2] == b'PK':  # A zip: torch's format, or numpy's .npz.
    names = head.decode('latin-1')
    return 'pickle' if 'data.pkl' in names else None
  if head[:1] == b'\x80':  # A bare pickle (old torch.save).
    return 'pickle'
  return None


def _read_safetensors(
    path: epath.Path) -> Tuple[pytorch_layout.Flat, Dict[str, str]]:
  """Tensors and metadata of a safetensors file."""
  data = path.read_bytes()
  try:
    header_size = int.from_bytes(data[:8], 'little')
    header = json.loads(data[8:8 + header_size])
  except (ValueError, UnicodeDecodeError) as e:
    raise pytorch_layout.PyTorchWeightsError(
        f'{path} is not a readable safetensors file ({e}); it may be '
        'truncated or of another format.') from e
  metadata = header.pop('__metadata__', None) or {}
  bfloat16 = [k for k, v in header.items() if v.get('dtype') == 'BF16']
  if bfloat16:
    # safetensors.numpy has no bfloat16: read those tensors as float16 (the
    # same width; the header keeps its length) and reinterpret the bits.
    end = 8 + header_size
    data = data[:8] + data[8:end].replace(b'"BF16"', b'"F16" ') + data[end:]
  try:
    tensors = dict(safetensors.numpy.load(data))
  except Exception as e:  # safetensors raises its own error types.
    raise pytorch_layout.PyTorchWeightsError(
        f'{path} is not a readable safetensors file ({type(e).__name__}: '
        f'{e}); it may be truncated.') from e
  for key in bfloat16:
    tensors[key] = tensors[key].view(ml_dtypes.bfloat16).astype(np.float32)
  return tensors, metadata


def _read_pickle(path: epath.Path) -> pytorch_layout.Flat:
  """A torch.save'd state dict; needs torch."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise pytorch_layout.PyTorchWeightsError(
        f'{path} is a PyTorch pickle ({path.suffix or "torch.save"} file), '
        'which only torch can read, and torch is not installed. Install it '
        "(pip install 'vit_flax[torch]', or pip install torch), or convert "
        'the file once to safetensors where torch is installed: python -c '
        '"import torch, safetensors.torch; safetensors.torch.save_file({k: '
        f"v.contiguous() for k, v in torch.load('{path}', map_location='cpu')"
        ".items()}, 'model.safetensors')\" (unwrap a 'model' or "
        "'state_dict' entry first if the file has one).") from e
  try:
    state = torch.load(io.BytesIO(path.read_bytes()), map_location='cpu',
                       weights_only=True)
  except Exception as e:  # Pickle and zip errors of many kinds.
    raise pytorch_layout.PyTorchWeightsError(
        f'{path} is not a readable PyTorch state dict ({type(e).__name__}: '
        f'{e}).') from e
  for wrapper in ('model', 'state_dict'):  # DeiT's and timm's train files.
    if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
      state = state[wrapper]
  if not isinstance(state, dict):
    raise pytorch_layout.PyTorchWeightsError(
        f'{path} holds a {type(state).__name__}, not a state dict (a dict of '
        'tensors).')
  return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy()
          for k, v in state.items() if isinstance(v, torch.Tensor)}


def _read_config(path: epath.Path) -> Optional[Dict[str, Any]]:
  if not path.exists():
    return None
  try:
    config = json.loads(path.read_text())
  except ValueError as e:
    raise pytorch_layout.PyTorchWeightsError(
        f'{path} is not valid JSON ({e}).') from e
  if not isinstance(config, dict):
    raise pytorch_layout.PyTorchWeightsError(f'{path} holds no JSON object.')
  return config


def read(
    path
) -> Tuple[pytorch_layout.Flat, Dict[str, str], Optional[Dict[str, Any]]]:
  """(state dict as numpy, safetensors metadata, config.json or None).

  `path` is a `.safetensors` / `.pth` / `.bin` / `.pt` file (a `config.json`
  beside it is read too) or a folder with one of `FOLDER_FILES` and a
  `config.json`.
  """
  path = epath.Path(path)
  if not path.exists():
    raise npz.CheckpointNotFoundError(
        f'Checkpoint {path} does not exist. Give a timm or Hugging Face '
        'checkpoint (a .safetensors / .pth / .bin file, or a folder with '
        'model.safetensors and config.json) or a vit_jax .npz file.')
  folder = path if path.is_dir() else path.parent
  if path.is_dir():
    found = [name for name in FOLDER_FILES if (path / name).exists()]
    if not found:
      raise pytorch_layout.PyTorchWeightsError(
          f'Folder {path} holds none of {", ".join(FOLDER_FILES)}; give the '
          'folder of a saved timm or transformers model, or the weights '
          f'file itself. It holds: {sorted(p.name for p in path.iterdir())}.')
    path = path / found[0]
  metadata = {}
  if path.name.endswith('.index.json'):  # Sharded: a map of key -> shard.
    index = _read_config(path)
    state = {}
    for shard in sorted(set(index.get('weight_map', {}).values())):
      tensors, _ = _read_safetensors(folder / shard)
      state.update(tensors)
  elif path.suffix == '.safetensors' or (
      path.suffix not in PICKLE_SUFFIXES and _sniff(path) == 'safetensors'):
    state, metadata = _read_safetensors(path)
  else:
    state = _read_pickle(path)
  if not state:
    raise pytorch_layout.PyTorchWeightsError(
        f'Checkpoint {path} holds no tensors.')
  return state, metadata, _read_config(folder / 'config.json')


def stated_layer_norm_eps(path) -> Optional[float]:
  """The LayerNorm epsilon of a Hugging Face ViT / DeiT checkpoint, from its
  config.json (transformers' default, 1e-12, when it says none); None for
  other checkpoints (timm's ViTs use vit_flax's 1e-6). Reads no weights."""
  path = epath.Path(path)
  folder = path if path.is_dir() else path.parent
  config = _read_config(folder / 'config.json')
  if not config or config.get('model_type') not in HF_MODEL_TYPES:
    return None
  return float(config.get('layer_norm_eps', 1e-12))


def detect_layout(state: Mapping[str, Any]) -> Tuple[str, str]:
  """('timm', '') or ('hf', key prefix) from the keys of a state dict."""
  if 'patch_embed.proj.weight' in state:
    return 'timm', ''
  suffix = 'embeddings.patch_embeddings.projection.weight'
  for key in state:
    if key.endswith(suffix):
      prefix = key[:-len(suffix)]
      if prefix in ('', 'vit.', 'deit.'):
        return 'hf', prefix
  hints = [what for pattern, what in _FEATURES
           if any(re.search(pattern, k) for k in state)]
  raise pytorch_layout.PyTorchWeightsError(
      'The state dict is neither a timm ViT/DeiT (no patch_embed.proj.weight)'
      ' nor a Hugging Face ViT/DeiT (no [vit.|deit.]embeddings.'
      f'patch_embeddings.projection.weight). Its first keys: '
      f'{sorted(state)[:8]}'
      f'{"; it has " + ", ".join(hints) if hints else ""}.')


# Converting a state dict.


def _num_layers(state: Mapping[str, Any], pattern: str) -> int:
  indices = [int(m.group(1)) for k in state
             for m in [re.match(pattern, k)] if m]
  return max(indices) + 1 if indices else 0


def _convert(state: Mapping[str, np.ndarray],
             entries: Sequence[pytorch_layout.Entry], num_heads: Optional[int],
             name: str) -> pytorch_layout.Flat:
  """vit_flax flat params from `state`; errors on missing and extra keys."""
  by_key = {e.torch_key: e for e in entries}
  extra = sorted(set(state) - set(by_key))
  if extra:
    features = [what for pattern, what in _FEATURES
                if any(re.search(pattern, k) for k in extra)]
    raise pytorch_layout.PyTorchWeightsError(
        f'{name} has {len(extra)} keys that vit_flax\'s ViT has no parameter '
        f'for: {pytorch_layout.listing(extra)}.'
        f'{" They belong to " + "; ".join(features) + "." if features else ""}'
        ' Only plain ViT / DeiT checkpoints convert.')
  groups = {e.group for e in entries if e.torch_key in state}
  missing = [e.torch_key for e in entries
             if (not e.group or e.group in groups) and e.torch_key not in state]
  if missing:
    raise pytorch_layout.PyTorchWeightsError(
        f'{name} lacks {len(missing)} keys of a ViT with its blocks: '
        f'{pytorch_layout.listing(missing)}. It may be truncated, or of '
        'another model.'
    )
  flat = {}
  for entry in entries:
    if entry.torch_key in state:
      arrays = to_flax(entry.kind, np.asarray(state[entry.torch_key]),
                       num_heads, entry.torch_key)
      flat.update(zip(entry.flax_keys, arrays))
  return flat


def _shape_architecture(flat: pytorch_layout.Flat, layout: str,
                        **fields) -> Architecture:
  """What the shapes say; `fields` add or override (heads, gelu, ...)."""
  kernel = flat['embedding/kernel']
  head = flat.get('head/bias')
  pre_logits = flat.get('pre_logits/kernel')
  values = dict(
      layout=layout,
      hidden_size=int(kernel.shape[-1]),
      num_layers=_num_layers(flat, r'Transformer/encoderblock_(\d+)/'),
      mlp_dim=int(flat['Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel']
                  .shape[-1]),
      patch_size=(int(kernel.shape[0]), int(kernel.shape[1])),
      num_heads=None,
      class_token='cls' in flat,
      distilled='dist' in flat,
      classifier=None,
      gelu='exact',
      gelu_source='',
      gelu_stated=False,
      num_classes=0 if head is None else int(head.shape[0]),
      representation_size=(None if pre_logits is None
                           else int(pre_logits.shape[-1])),
      num_tokens=int(flat[pytorch_layout.POSEMB].shape[1]))
  values.update(fields)
  return Architecture(**values)


def _timm_args(metadata: Mapping[str, str],
               config: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
  """timm `create_model` arguments known for a file (may be empty)."""
  args = {}
  if config and 'architecture' in config:  # timm's hub config.json
    if config.get('global_pool'):
      args['global_pool'] = config['global_pool']
    args.update(config.get('model_args') or {})
  if pytorch_layout.TIMM_ARGS_METADATA in metadata:
    args.update(json.loads(metadata[pytorch_layout.TIMM_ARGS_METADATA]))
  return args


def _from_timm(state: pytorch_layout.Flat, metadata, config, num_heads, name
               ) -> Tuple[pytorch_layout.Flat, Architecture]:
  args = _timm_args(metadata, config)
  heads = args.get('num_heads', num_heads)
  num_layers = _num_layers(state, r'blocks\.(\d+)\.')
  sizes = _torch_sizes(state, 'patch_embed.proj.weight',
                       'blocks.0.mlp.fc1.weight')
  _check_stated({'embed_dim': sizes['hidden'], 'depth': num_layers,
                 'patch_size': sizes['patch'],
                 'class_token': 'cls_token' in state}, args,
                f'The timm arguments of {name} do not match its weights')
  flat = _convert(state, pytorch_layout.timm_entries(num_layers), heads, name)
  act = args.get('act_layer', 'gelu')
  if act not in TIMM_GELUS:
    raise pytorch_layout.PyTorchWeightsError(
        f'{name} was built with act_layer={act!r}; vit_flax has the GELUs '
        f'{sorted(TIMM_GELUS)} (exact and tanh).')
  pool = args.get('global_pool')
  classifier = None
  if pool is not None:
    has_cls = 'cls' in flat
    classifier = {('token', True): 'token', ('avg', False): 'gap',
                  ('', False): 'unpooled', ('', True): 'token_unpooled'
                  }.get((pool, has_cls))
    if classifier is None:
      raise pytorch_layout.PyTorchWeightsError(
          f'{name} pools with global_pool={pool!r} '
          f'{"with" if has_cls else "without"} a class token; vit_flax has '
          "'token' (class token), 'avg' (gap, no class token) and '' "
          '(unpooled).')
    if args.get('fc_norm') and classifier == 'gap':
      raise pytorch_layout.PyTorchWeightsError(
          f'{name} has fc_norm=True: {_FEATURES[0][1]}.')
    if classifier == 'token' and 'dist' in flat:  # timm's distilled DeiT.
      classifier = 'token_distill'
  stated = 'act_layer' in args
  source = (f'act_layer={act!r}' if stated else
            "timm's default act_layer, nn.GELU; no config says otherwise")
  return flat, _shape_architecture(
      flat, 'timm', num_heads=heads if 'num_heads' in args else None,
      classifier=classifier, gelu=TIMM_GELUS[act], gelu_source=source,
      gelu_stated=stated)


def _from_hf(state: pytorch_layout.Flat, prefix: str, config, num_heads, name
             ) -> Tuple[pytorch_layout.Flat, Architecture]:
  config = dict(config or {})
  model_type = config.get('model_type')
  if config and model_type not in HF_MODEL_TYPES:
    raise pytorch_layout.PyTorchWeightsError(
        f'{name} has the config of a {model_type!r} model; vit_flax converts '
        f'the transformers model types {HF_MODEL_TYPES}.')
  heads = config.get('num_attention_heads', num_heads)
  num_layers = _num_layers(state,
                           re.escape(prefix) + r'encoder\.layer\.(\d+)\.')
  sizes = _torch_sizes(
      state, f'{prefix}embeddings.patch_embeddings.projection.weight',
      f'{prefix}encoder.layer.0.intermediate.dense.weight')
  _check_stated({'hidden_size': sizes['hidden'],
                 'num_hidden_layers': num_layers,
                 'intermediate_size': sizes['mlp'],
                 'patch_size': sizes['patch']}, config,
                f'The config.json of {name} does not match its weights')
  distilled_heads = 'cls_classifier.weight' in state
  flat = _convert(
      state, pytorch_layout.hf_entries(num_layers, prefix, distilled_heads),
      heads, name)
  act = config.get('hidden_act', 'gelu')
  if act not in HF_GELUS:
    raise pytorch_layout.PyTorchWeightsError(
        f'{name} has hidden_act={act!r}; vit_flax has the GELUs '
        f'{sorted(HF_GELUS)} (exact, and two names of the tanh form).')
  if not config.get('qkv_bias', True):
    raise pytorch_layout.PyTorchWeightsError(
        f'{name} has qkv_bias=false; vit_flax\'s attention has biases.')
  stated = 'hidden_act' in config
  source = (f'config.json hidden_act={act!r}' if stated else
            "transformers' default hidden_act, 'gelu'; no config.json says")
  return flat, _shape_architecture(
      flat, 'hf', num_heads=heads if 'num_attention_heads' in config else None,
      classifier='token_distill' if 'dist' in flat else 'token',
      gelu=HF_GELUS[act], gelu_source=source,
      gelu_stated=stated,
      layer_norm_eps=config.get('layer_norm_eps', 1e-12))


def _torch_sizes(state: Mapping[str, Any], conv_key: str,
                 fc1_key: str) -> Dict[str, Any]:
  """Sizes read from the torch tensors (None where a key is missing)."""
  conv = np.shape(state[conv_key]) if conv_key in state else None
  fc1 = np.shape(state[fc1_key]) if fc1_key in state else None
  return {'hidden': conv[0] if conv else None,
          'patch': tuple(conv[2:]) if conv else None,
          'mlp': fc1[0] if fc1 else None}


def _check_stated(actual: Mapping[str, Any], stated: Mapping[str, Any],
                  what: str) -> None:
  """A config that contradicts its own tensors is an error."""
  wrong = []
  for field, value in actual.items():
    if field not in stated or value is None:
      continue
    said = stated[field]
    if field == 'patch_size':  # An int or a pair.
      said = tuple(said) if isinstance(said, (list, tuple)) else (said, said)
    if said != value:
      if field == 'patch_size' and value[0] == value[1]:
        value = value[0]
      wrong.append(f'{field}={stated[field]} but the tensors have {value}')
  if wrong:
    raise pytorch_layout.PyTorchWeightsError(
        f'{what}: {"; ".join(wrong)}. The config and the weights come from '
        'different models.')


def load(path, num_heads: Optional[int] = None
         ) -> Tuple[pytorch_layout.Params, Architecture]:
  """Reads a timm / HF checkpoint as vit_flax params and its architecture.

  Args:
    path: a `.safetensors` / `.pth` / `.bin` / `.pt` file, or a folder (see
      `read`).
    num_heads: the attention heads, used when the file does not give them
      (timm state dicts without a config).

  Returns:
    (nested params with vit_flax's names, the checkpoint's `Architecture`).
  """
  state, metadata, config = read(path)
  layout, prefix = detect_layout(state)
  name = f'Checkpoint {path} ({layout} layout)'
  if layout == 'timm':
    flat, arch = _from_timm(state, metadata, config, num_heads, name)
  else:
    hf_config = config if config and 'model_type' in config else None
    flat, arch = _from_hf(state, prefix, hf_config, num_heads, name)
  logging.info('%s: %s', name, arch)
  return npz.recover_tree(list(flat), list(flat.values())), arch


def check_fits(arch: Architecture, model_config: Mapping[str, Any],
               init_flat: Mapping[str, Any], path) -> None:
  """Raises a CheckpointError naming each way `arch` differs from the model.

  The GELU flavour is part of it: a model computes what the checkpoint was
  trained with only under the same `config.model.gelu`.
  """
  wrong = []
  if model_config.get('resnet') is not None:
    wrong.append('config.model.resnet is set (a hybrid ResNet root), which '
                 'these plain ViT checkpoints lack; unset it')
  if model_config.get('stages') is not None or 'transformer' not in (
      model_config):
    raise pytorch_layout.PyTorchWeightsError(
        f'Checkpoint {path} is a plain ViT; config.model is not one (staged '
        "widths or another model type). Use config.model_type='vit'.")
  if model_config.get('locality'):
    wrong.append('config.model.locality=True adds a depthwise conv to every '
                 'MLP, which the checkpoint lacks; set locality=False')
  transformer = model_config['transformer']
  hf = arch.layout == 'hf'
  fields = (
      ('hidden_size', arch.hidden_size, model_config.get('hidden_size'),
       'hidden_size' if hf else 'embed_dim'),
      ('transformer.num_layers', arch.num_layers,
       transformer.get('num_layers'), 'num_hidden_layers' if hf else 'depth'),
      ('transformer.mlp_dim', arch.mlp_dim, transformer.get('mlp_dim'),
       'intermediate_size' if hf else 'mlp_ratio * embed_dim'),
      ('transformer.num_heads', arch.num_heads, transformer.get('num_heads'),
       'num_attention_heads' if hf else 'num_heads'),
      ('patches.size', arch.patch_size,
       tuple(model_config['patches']['size']), 'patch_size'),
  )
  for field, ours, theirs, their_name in fields:
    if ours is not None and ours != theirs:
      wrong.append(f'config.model.{field}={theirs} but the checkpoint has '
                   f'{ours} ({their_name})')
  classifier = model_config.get('classifier', 'token')
  model_cls = vit.num_prefix_tokens(classifier) > 0
  # Whether there is a distillation token is told below, once.
  pooling = {'token_distill': 'token'}
  if arch.class_token != model_cls:
    wrong.append(
        f'the checkpoint has {"a" if arch.class_token else "no"} class token '
        f'but config.model.classifier={classifier!r} has '
        f'{"one" if model_cls else "none"}; use classifier='
        f'{"token" if arch.class_token else "gap"!r}')
  elif arch.classifier is not None and pooling.get(
      arch.classifier, arch.classifier) != pooling.get(classifier, classifier):
    wrong.append(f'config.model.classifier={classifier!r} but the checkpoint '
                 f'pools as {arch.classifier!r}')
  if arch.distilled != ('dist' in init_flat):
    wrong.append(
        f'the checkpoint {"has" if arch.distilled else "lacks"} a DeiT '
        'distillation token (dist_token / distillation_token) that the model '
        f'{"lacks" if arch.distilled else "has"}')
  if model_config.get('posemb', 'learned') == 'sincos2d':
    wrong.append(
        "config.model.posemb='sincos2d' computes fixed position embeddings, "
        'but the checkpoint holds a table of them (its pos_embed / '
        "position_embeddings); use posemb='learned' to load it (a vit_flax "
        "sincos2d model exported for timm or transformers holds its sin-cos "
        'table, which computes the same at the image size it was exported '
        'at)')
  gelu = model_config.get('gelu', 'tanh')
  if arch.gelu != gelu:
    hint = ''
    if arch.layout == 'timm' and not arch.gelu_stated:
      hint = (' (if these weights were trained with tanh GELU, say so in a '
              'timm config.json beside the file: {"architecture": ..., '
              '"model_args": {"act_layer": "gelu_tanh"}})')
    wrong.append(
        f"config.model.gelu={gelu!r} but the checkpoint uses {arch.gelu!r} "
        f'GELU ({arch.gelu_source}); set --config.model.gelu={arch.gelu} to '
        f'compute what it was trained with{hint}')
  if wrong:
    raise pytorch_layout.PyTorchWeightsError(
        f'Checkpoint {path} ({arch.layout} layout) does not fit config.model: '
        f'{"; ".join(wrong)}.')
  eps = vit.layer_norm_epsilon(model_config.get('layer_norm_eps'))
  if arch.layer_norm_eps is not None and arch.layer_norm_eps != eps:
    logging.warning(
        'Checkpoint %s uses LayerNorm epsilon %g, config.model.layer_norm_eps '
        'is %g: activations differ by about that much relative to their '
        'variance (leave the field unset to take the checkpoint\'s).', path,
        arch.layer_norm_eps, eps)
