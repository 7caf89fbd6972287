"""timm and transformers checkpoints made by hand, without torch.

The state dicts follow the libraries' own conversions of vit_jax weights
(timm's `_load_weights` for `.npz` files, transformers'
`convert_vit_timm_to_pytorch.py`), written out here independently of
`vit_flax.weights`. `timm_forward` computes a timm ViT / DeiT with
NumPy from such a state dict, so that the layouts are checked against what
the PyTorch models compute, not only against our own conversion.
"""

import json
import os

import flax
import numpy as np
import safetensors.numpy
import scipy.special

QKV = ('query', 'key', 'value')


def flat(params):
  return flax.traverse_util.flatten_dict(params, sep='/')


def timm_state(params) -> dict:
  """The timm state dict of nested vit_flax params."""
  p = flat(params)
  state = {
      'patch_embed.proj.weight': p['embedding/kernel'].transpose(3, 2, 0, 1),
      'patch_embed.proj.bias': p['embedding/bias'],
      'pos_embed': p['Transformer/posembed_input/pos_embedding'],
      'norm.weight': p['Transformer/encoder_norm/scale'],
      'norm.bias': p['Transformer/encoder_norm/bias'],
  }
  for ours, theirs in (('cls', 'cls_token'), ('dist', 'dist_token')):
    if ours in p:
      state[theirs] = p[ours]
  for head in ('head', 'head_dist'):
    if f'{head}/kernel' in p:
      state[f'{head}.weight'] = p[f'{head}/kernel'].T
      state[f'{head}.bias'] = p[f'{head}/bias']
  i = 0
  while f'Transformer/encoderblock_{i}/LayerNorm_0/scale' in p:
    b, t = f'Transformer/encoderblock_{i}/', f'blocks.{i}.'
    a = b + 'MultiHeadDotProductAttention_1/'
    hidden = p[b + 'LayerNorm_0/scale'].shape[0]
    state[t + 'norm1.weight'] = p[b + 'LayerNorm_0/scale']
    state[t + 'norm1.bias'] = p[b + 'LayerNorm_0/bias']
    state[t + 'attn.qkv.weight'] = np.concatenate(
        [p[f'{a}{n}/kernel'].reshape(hidden, -1).T for n in QKV])
    state[t + 'attn.qkv.bias'] = np.concatenate(
        [p[f'{a}{n}/bias'].reshape(-1) for n in QKV])
    state[t + 'attn.proj.weight'] = p[a + 'out/kernel'].transpose(
        2, 0, 1).reshape(hidden, -1)
    state[t + 'attn.proj.bias'] = p[a + 'out/bias']
    state[t + 'norm2.weight'] = p[b + 'LayerNorm_2/scale']
    state[t + 'norm2.bias'] = p[b + 'LayerNorm_2/bias']
    for j in range(2):
      state[f'{t}mlp.fc{j + 1}.weight'] = p[
          f'{b}MlpBlock_3/Dense_{j}/kernel'].T
      state[f'{t}mlp.fc{j + 1}.bias'] = p[f'{b}MlpBlock_3/Dense_{j}/bias']
    i += 1
  return {k: np.ascontiguousarray(v) for k, v in state.items()}


def hf_state(params, prefix='vit.', distilled_heads=False) -> dict:
  """The transformers state dict, renamed from the timm one as
  `convert_vit_timm_to_pytorch.py` does."""
  timm = timm_state(params)
  hidden = timm['norm.weight'].shape[0]
  state = {}
  names = {'cls_token': 'embeddings.cls_token',
           'dist_token': 'embeddings.distillation_token',
           'pos_embed': 'embeddings.position_embeddings',
           'patch_embed.proj': 'embeddings.patch_embeddings.projection',
           'norm': 'layernorm'}
  heads = ({'head': 'cls_classifier', 'head_dist': 'distillation_classifier'}
           if distilled_heads else {'head': 'classifier'})
  block = {'norm1': 'layernorm_before', 'norm2': 'layernorm_after',
           'attn.proj': 'attention.output.dense',
           'mlp.fc1': 'intermediate.dense', 'mlp.fc2': 'output.dense'}
  for key, value in timm.items():
    stem, _, leaf = key.rpartition('.')
    if key in names:
      state[prefix + names[key]] = value
    elif stem in names:
      state[f'{prefix}{names[stem]}.{leaf}'] = value
    elif stem in heads:
      state[f'{heads[stem]}.{leaf}'] = value
    elif stem.endswith('attn.qkv'):
      i = stem.split('.')[1]
      for n, part in zip(QKV, np.split(value, 3)):
        assert part.shape[0] == hidden
        state[f'{prefix}encoder.layer.{i}.attention.attention.{n}.{leaf}'] = (
            np.ascontiguousarray(part))
    else:
      _, i, sub = stem.split('.', 2)
      state[f'{prefix}encoder.layer.{i}.{block[sub]}.{leaf}'] = value
  return state


def hf_config(hidden=16, layers=2, heads=2, mlp=32, patch=4, image=16,
              classes=5, hidden_act='gelu', model_type='vit', **overrides):
  config = {
      'architectures': ['ViTForImageClassification'],
      'model_type': model_type, 'hidden_size': hidden,
      'num_hidden_layers': layers, 'num_attention_heads': heads,
      'intermediate_size': mlp, 'hidden_act': hidden_act,
      'layer_norm_eps': 1e-12, 'image_size': image, 'patch_size': patch,
      'num_channels': 3, 'qkv_bias': True,
      'id2label': {str(i): f'LABEL_{i}' for i in range(classes)},
  }
  config.update(overrides)
  return config


def write_safetensors(path, state, metadata=None):
  safetensors.numpy.save_file(state, str(path), metadata=metadata)


def write_hf_folder(folder, state, config):
  os.makedirs(folder, exist_ok=True)
  write_safetensors(os.path.join(folder, 'model.safetensors'), state,
                    {'format': 'pt'})
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    json.dump(config, f)


def _layer_norm(x, weight, bias, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean)**2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * weight + bias


def _gelu(x, flavour):
  if flavour == 'exact':  # torch.nn.GELU()
    return 0.5 * x * (1 + scipy.special.erf(x / np.sqrt(2)))
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def timm_forward(state, images, num_heads, gelu='exact', global_pool='token',
                 eps=1e-6):
  """timm's VisionTransformer(Distilled) in eval mode, in float64 NumPy.

  `images` are NHWC as vit_flax takes them; timm would take them NCHW.
  `eps`: the LayerNorms' epsilon (timm's 1e-6; Hugging Face's 1e-12 gives
  what transformers computes with the same weights).
  """
  s = {k: np.asarray(v, np.float64) for k, v in state.items()}
  images = np.asarray(images, np.float64)
  weight = s['patch_embed.proj.weight']  # (out, in, kh, kw)
  d, c, p, _ = weight.shape
  n, h, w, _ = images.shape
  patches = images.reshape(n, h // p, p, w // p, p, c).transpose(
      0, 1, 3, 5, 2, 4).reshape(n, -1, c * p * p)
  x = patches @ weight.reshape(d, -1).T + s['patch_embed.proj.bias']
  prefix = [s[k] for k in ('cls_token', 'dist_token') if k in s]
  x = np.concatenate([np.broadcast_to(t, (n, 1, d)) for t in prefix] + [x],
                     axis=1)
  x = x + s['pos_embed']
  i = 0
  while f'blocks.{i}.norm1.weight' in s:
    b = f'blocks.{i}.'
    y = _layer_norm(x, s[b + 'norm1.weight'], s[b + 'norm1.bias'], eps)
    qkv = y @ s[b + 'attn.qkv.weight'].T + s[b + 'attn.qkv.bias']
    qkv = qkv.reshape(n, x.shape[1], 3, num_heads, -1).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv
    logits = q @ k.swapaxes(-1, -2) * q.shape[-1]**-0.5
    attention = np.exp(logits - logits.max(-1, keepdims=True))
    attention /= attention.sum(-1, keepdims=True)
    y = (attention @ v).transpose(0, 2, 1, 3).reshape(n, x.shape[1], d)
    x = x + y @ s[b + 'attn.proj.weight'].T + s[b + 'attn.proj.bias']
    y = _layer_norm(x, s[b + 'norm2.weight'], s[b + 'norm2.bias'], eps)
    y = _gelu(y @ s[b + 'mlp.fc1.weight'].T + s[b + 'mlp.fc1.bias'], gelu)
    x = x + y @ s[b + 'mlp.fc2.weight'].T + s[b + 'mlp.fc2.bias']
    i += 1
  x = _layer_norm(x, s['norm.weight'], s['norm.bias'], eps)
  head = lambda z, name: z @ s[f'{name}.weight'].T + s[f'{name}.bias']
  if 'dist_token' in s:
    return (head(x[:, 0], 'head') + head(x[:, 1], 'head_dist')) / 2
  if global_pool == 'avg':
    return head(x[:, len(prefix):].mean(1), 'head')
  return head(x[:, 0], 'head')
