"""Exports a run's params for vit_jax, timm or Hugging Face transformers.

python -m vit_flax.export --workdir=/tmp/run --out=model.npz [--best] [--ema]
python -m vit_flax.export --workdir=/tmp/run --out=model.safetensors \\
    --format=safetensors
python -m vit_flax.export --workdir=/tmp/run --out=model_hf --format=hf

Formats:
- `npz`: the official flat `.npz` (what `checkpoint.load_pretrained`,
  vit_jax and timm's npz reader load).
- `safetensors`: a timm state dict (timm's key names) in a safetensors file;
  its metadata holds the timm `create_model` arguments of the model.
- `hf`: a folder with `model.safetensors` and `config.json` in the layout of
  transformers' `ViTForImageClassification` (with a distillation token,
  `DeiTForImageClassificationWithTeacher`).

It prints the Python lines that load the result in timm or transformers
with the logits of vit_flax. Each output appears whole or not at all: it is
written beside its destination under a temporary name and renamed at the
end, and the temporary file or folder is removed on any failure. An
existing output is an error unless --overwrite is given.
"""

import json
import sys
from typing import Any, Dict, Mapping, Optional
import uuid

from absl import app
from absl import flags
from absl import logging
from etils import epath

from vit_flax import checkpoint
from vit_flax import cli
from vit_flax import train_checkpoints
from vit_flax import errors
from vit_flax import pytorch_weights

FORMATS = ('npz', 'safetensors', 'hf')

flags.DEFINE_string('workdir', None, 'Workdir of a training run.')
flags.DEFINE_string('out', None, 'Path to write: a file (npz, safetensors) '
                    'or a folder (hf); gs:// works.')
flags.DEFINE_enum('format', 'npz', FORMATS, 'npz: vit_jax / vit_flax; '
                  'safetensors: timm; hf: Hugging Face transformers.')
flags.DEFINE_bool('best', False, 'Export the best evaluated checkpoint '
                  'instead of the latest.')
flags.DEFINE_bool('ema', False, 'Export the EMA of the params (runs trained '
                  'with config.ema_decay; with --best, the best checkpoint '
                  'holds the EMA already).')
flags.DEFINE_bool('overwrite', False, 'Replace --out if it exists.')
flags.mark_flags_as_required(['workdir', 'out'])
FLAGS = flags.FLAGS


def _model(config: Mapping[str, Any]):
  return config.get('model_type', 'vit'), config['model']


def encode(params, config: Mapping[str, Any], fmt: str) -> Dict[str, bytes]:
  """The files of `fmt` in memory: {None: bytes} or {name in folder: bytes}.

  A model that `fmt` cannot express raises here, before anything is
  written.
  """
  if fmt not in FORMATS:
    raise errors.ConfigError(
        f'Unknown export format {fmt!r}; expected one of {FORMATS}.')
  model_type, model_config = _model(config)
  if fmt == 'npz':
    return {None: checkpoint.npz_bytes(params)}
  if fmt == 'safetensors':
    state = pytorch_weights.to_timm(params, model_config, model_type)
    args = pytorch_weights.timm_model_args(params, model_config, model_type)
    return {None: pytorch_weights.safetensors_bytes(
        state, {pytorch_weights.TIMM_ARGS_METADATA: json.dumps(args)})}
  state, hf_config = pytorch_weights.to_hf(params, model_config, model_type)
  return {'model.safetensors': pytorch_weights.safetensors_bytes(state),
          'config.json': (json.dumps(hf_config, indent=2) + '\n').encode()}


def write_atomically(out, files: Mapping[Optional[str], bytes],
                     overwrite: bool = False) -> None:
  """Writes one file ({None: data}) or a folder of files, all or nothing."""
  out = epath.Path(out)
  if out.exists() and not overwrite:
    raise errors.UserError(
        f'{out} exists; choose another --out, or pass --overwrite to '
        'replace it.')
  tag = uuid.uuid4().hex[:8]
  tmp = out.parent / f'.{out.name}.tmp-{tag}'
  old = out.parent / f'.{out.name}.old-{tag}'
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    if None in files:
      tmp.write_bytes(files[None])
    else:
      tmp.mkdir()
      for name, data in files.items():
        (tmp / name).write_bytes(data)
    if out.exists():  # --overwrite: the old output goes once the new is in.
      out.rename(old)
    tmp.rename(out)
  except OSError as e:
    raise errors.UserError(
        f'Cannot write {out} ({type(e).__name__}: {e}); nothing was written. '
        'Choose an --out whose folder you can write to.') from e
  finally:
    for path in (tmp, old):
      _remove(path)


def _remove(path: epath.Path) -> None:
  try:
    if path.is_dir():
      path.rmtree()
    elif path.exists():
      path.unlink()
  except OSError as e:  # Nothing more to do than to say so.
    logging.warning('Could not remove %s: %s', path, e)


def loading_code(params, config: Mapping[str, Any], out, fmt: str) -> str:
  """Python lines that load `out` in timm / transformers, as text."""
  model_type, model_config = _model(config)
  out = str(out)
  if fmt == 'hf':
    return (
        'from transformers import AutoModelForImageClassification\n'
        f'model = AutoModelForImageClassification.from_pretrained({out!r})\n'
        f'{_INPUTS}\n'
        'logits = model(pixel_values=images).logits')
  try:
    args = pytorch_weights.timm_model_args(params, model_config, model_type)
  except errors.UserError as e:
    return f'# timm cannot load this model: {e}'
  arguments = ''.join(f',\n    {k}={v!r}' for k, v in args.items())
  lines = ['import timm']
  if fmt == 'safetensors':
    lines.append('import safetensors.torch')
  lines.append(f'model = timm.create_model(\n    '
               f'{pytorch_weights.timm_base_name(params)!r}, '
               f'pretrained=False{arguments})')
  if fmt == 'safetensors':
    lines.append(
        f'model.load_state_dict(safetensors.torch.load_file({out!r}))')
  else:
    lines.append(f"model.load_pretrained({out!r})  # timm's vit_jax reader")
  lines.append(_INPUTS)
  lines.append('logits = model.eval()(images)')
  return '\n'.join(lines)


_INPUTS = ("# images: vit_flax's input (pixels / 127.5 - 1) as a float32 "
           'torch\n# tensor of shape (batch, 3, height, width).')


def _export(workdir: str, out: str, best: bool, fmt: str, overwrite: bool,
            ema: bool = False):
  config, params = train_checkpoints.restore_for_inference(
      workdir, 'best' if best else 'latest', ema=ema)
  write_atomically(out, encode(params, config, fmt), overwrite)
  return config, params


def export(workdir: str, out: str, best: bool = False, fmt: str = 'npz',
           overwrite: bool = False, ema: bool = False) -> int:
  """Writes the latest (or best) checkpoint's params (or, with `ema`, their
  EMA); returns their count."""
  _, params = _export(workdir, out, best, fmt, overwrite, ema)
  count = sum(x.size for x in checkpoint.flatten(params).values())
  logging.info('Wrote %d parameters to %s (%s).', count, out, fmt)
  return count


def main(argv):
  del argv
  try:
    config, params = _export(FLAGS.workdir, FLAGS.out, FLAGS.best,
                             FLAGS.format, FLAGS.overwrite, FLAGS.ema)
  except errors.UserError as e:
    sys.exit(f'Error: {e}')
  print(f'Wrote {FLAGS.out}. To load it:\n')
  print(loading_code(params, config, FLAGS.out, FLAGS.format))


def run():
  """The `vit-flax-export` command."""
  cli.show_flags_in_help(__name__)
  app.run(main)


if __name__ == '__main__':
  run()
