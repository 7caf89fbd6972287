"""Exports a run's params for vit_jax, timm or Hugging Face transformers.

python -m vit_flax.export --workdir=/tmp/run --out=model.npz [--best] [--ema]
python -m vit_flax.export --workdir=/tmp/run --out=model.safetensors \\
    --format=safetensors
python -m vit_flax.export --workdir=/tmp/run --out=model_hf --format=hf

Formats:
- `npz`: the official flat `.npz`, for every model (what
  `pretrained.load_pretrained` reads; vit_jax and timm's npz reader too for
  the plain ViTs they build).
- `safetensors`: a timm state dict (timm's key names) in a safetensors file;
  its metadata holds the timm `create_model` arguments of the model (a
  distilled model is timm's `VisionTransformerDistilled`).
- `hf`: a folder with `model.safetensors` and `config.json` in the layout of
  transformers' `ViTForImageClassification` (with a distillation token,
  `DeiTForImageClassificationWithTeacher`).

timm and transformers have no equivalent of some vit_flax features (locality,
SPT, LSA, staged widths, a hybrid root, pre_logits): exporting those for them
is an error naming the feature, before anything is written. Fixed sin-cos
position embeddings (`posemb='sincos2d'`) are written as the table they add
at `config.pp.crop`, which timm and transformers then add as theirs.

It prints the Python lines that load the result in timm, transformers or,
for an npz that timm cannot read as this model, vit_flax, with the logits
of vit_flax. Each output appears whole or not at all: it is
written beside its destination under a temporary name and renamed at the
end, and the temporary file or folder is removed on any failure. An
existing output is an error unless --overwrite is given.
"""

import json
import os
import pprint
import re
import sys
import textwrap
from typing import Any, Dict, Mapping, Optional
import uuid

from absl import app
from absl import flags
from absl import logging
from etils import epath

from vit_flax import errors
from vit_flax.commands import cli
from vit_flax.training import checkpointing
from vit_flax.training import host
from vit_flax.weights import npz
from vit_flax.weights import pytorch_layout
from vit_flax.weights import pytorch_write

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


def _image_size(config: Mapping[str, Any]) -> Optional[int]:
  """The evaluation image size of the run (`config.pp.crop`), if known."""
  pp = config.get('pp')
  crop = pp.get('crop') if pp is not None else None
  return int(crop) if crop else None


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
    return {None: npz.npz_bytes(params)}
  image_size = _image_size(config)
  if fmt == 'safetensors':
    state = pytorch_write.to_timm(params, model_config, model_type, image_size)
    args = pytorch_write.timm_model_args(params, model_config, model_type,
                                         image_size)
    return {None: pytorch_write.safetensors_bytes(
        state, {pytorch_layout.TIMM_ARGS_METADATA: json.dumps(args)})}
  state, hf_config = pytorch_write.to_hf(params, model_config, model_type,
                                         image_size)
  return {'model.safetensors': pytorch_write.safetensors_bytes(state),
          'config.json': (json.dumps(hf_config, indent=2) + '\n').encode()}


def write_atomically(out, files: Mapping[Optional[str], bytes],
                     overwrite: bool = False) -> None:
  """Writes one file ({None: data}) or a folder of files, all or nothing."""
  out = epath.Path(out)
  if out.parent.is_dir():
    remove_killed_exports(out)
  if out.exists() and not overwrite:
    raise errors.UserError(
        f'{out} exists; choose another --out, or pass --overwrite to '
        'replace it.')
  # The pid tells a later export whether these are a live job's files.
  tag = f'{os.getpid()}-{uuid.uuid4().hex[:8]}'
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


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process.
    return True
  return True


def remove_killed_exports(out: epath.Path) -> None:
  """Removes what exports of `out` killed midway (kill -9) left behind: the
  new output half-written (`.<name>.tmp-<pid>-<tag>`) and, if the kill came
  between the two renames of `--overwrite`, puts the previous output
  (`.<name>.old-<pid>-<tag>`) back in place. Files of live exports stay."""
  pattern = re.compile(rf'\.{re.escape(out.name)}\.(tmp|old)-(\d+)-[0-9a-f]+')
  stale = []
  for path in out.parent.glob(f'.{out.name}.*'):
    match = pattern.fullmatch(path.name)
    if match and not _process_alive(int(match.group(2))):
      stale.append((match.group(1), path))
  for kind, path in sorted(stale, key=lambda item: item[0] != 'old'):
    if kind == 'old' and not out.exists():
      path.rename(out)
      logging.warning('Restored %s, which an export killed midway had moved '
                      'aside.', out)
    else:
      logging.warning('Removing %s, left by an export killed midway.', path)
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
  """Python lines that load `out` in timm / transformers, as text.

  An npz that timm's reader cannot load as this model (a model timm has no
  equivalent of, a distillation token, no learned position embeddings)
  gets vit_flax's own lines instead, after a comment saying why and who
  reads it.
  """
  model_type, model_config = _model(config)
  out = str(out)
  image_size = _image_size(config)
  if fmt == 'hf':
    return '\n'.join(
        ['from transformers import AutoModelForImageClassification',
         f'model = AutoModelForImageClassification.from_pretrained({out!r})']
        + _sincos_note(model_config, image_size)
        + [_INPUTS, 'logits = model(pixel_values=images).logits'])
  if fmt == 'npz':
    why_not_timm = _why_timm_cannot_read_npz(params, model_type, model_config)
    if why_not_timm:
      return _vit_flax_loading_code(params, model_type, model_config, out,
                                    why_not_timm)
  args = pytorch_write.timm_model_args(params, model_config, model_type,
                                       image_size)
  arguments = ''.join(f',\n    {k}={v!r}' for k, v in args.items())
  lines = ['import timm']
  if fmt == 'safetensors':
    lines.append('import safetensors.torch')
  lines.append(f'model = timm.create_model(\n    '
               f'{pytorch_write.timm_base_name(params)!r}, '
               f'pretrained=False{arguments})')
  if fmt == 'safetensors':
    lines.append(
        f'model.load_state_dict(safetensors.torch.load_file({out!r}))')
  else:
    lines.append(f"model.load_pretrained({out!r})  # timm's vit_jax reader")
  lines += _sincos_note(model_config, image_size)
  lines.append(_INPUTS)
  lines.append('logits = model.eval()(images)')
  return '\n'.join(lines)


_INPUTS = ("# images: vit_flax's input (pixels / 127.5 - 1) as a float32 "
           'torch\n# tensor of shape (batch, 3, height, width).')


def _sincos_note(model_config, image_size):
  if model_config.get('posemb', 'learned') != 'sincos2d':
    return []
  return ["# Its position embeddings are model.posemb='sincos2d' as a fixed "
          f'table for\n# {image_size}x{image_size} images (config.pp.crop): '
          'give images of that size.']


def _why_timm_cannot_read_npz(params, model_type: str,
                              model_config: Mapping[str, Any]
                              ) -> Optional[str]:
  """Why timm's npz reader cannot load this model (None: it can)."""
  features = pytorch_write.unexportable_features(model_type, model_config,
                                                 'timm')
  readers = pytorch_write.npz_readers(model_type, model_config)
  if features:
    return (f'{pytorch_write.no_equivalent(features, "timm")}; '
            f'{readers}.')
  flat = npz.flatten(params)
  if 'dist' in flat:
    return ("timm's npz reader skips the distillation token and head "
            '(export with --format=safetensors for timm, --format=hf for '
            f'transformers); {readers}.')
  if pytorch_layout.POSEMB not in flat:
    return ("timm's npz reader needs learned position embeddings, which "
            f'{pytorch_write.posemb_feature(model_config)} does not have '
            '(export with --format=safetensors for timm, --format=hf for '
            f'transformers: they get them as a table); {readers}.')
  try:
    pytorch_write.timm_model_args(params, model_config, model_type)
  except errors.UserError as e:
    return f"{str(e).rstrip('.')}; {readers}."
  return None


def _vit_flax_loading_code(params, model_type: str,
                           model_config: Mapping[str, Any], out: str,
                           why_not_timm: str) -> str:
  head = npz.flatten(params).get('head/bias')
  num_classes = 0 if head is None else int(head.shape[-1])
  if hasattr(model_config, 'to_dict'):
    model_config = model_config.to_dict()
  literal = pprint.pformat(dict(model_config), width=74, sort_dicts=False)
  literal = literal.replace('\n', '\n    ')
  comment = '\n'.join(
      '# ' + line
      for line in textwrap.wrap(f"{why_not_timm.rstrip('.')}:", 76))
  return '\n'.join([
      comment,
      'from vit_flax import checkpoint',
      'from vit_flax import model_configs',
      f'model = model_configs.create_model(\n    {model_type!r},\n    '
      f'{literal},\n    num_classes={num_classes})',
      f'params = checkpoint.load({out!r})',
      "# images: vit_flax's input (pixels / 127.5 - 1) as a float32 array "
      'of\n# shape (batch, height, width, 3).',
      "logits = model.apply({'params': params}, images, train=False)"])


def _export(workdir: str, out: str, best: bool, fmt: str, overwrite: bool,
            ema: bool = False):
  """(config, params, loading code), once `out` is written."""
  config, params = checkpointing.restore_for_inference(
      workdir, 'best' if best else 'latest', ema=ema)
  files = encode(params, config, fmt)
  # Before writing: whatever fails, fails with nothing written.
  code = loading_code(params, config, out, fmt)
  write_atomically(out, files, overwrite)
  return config, params, code


def export(workdir: str, out: str, best: bool = False, fmt: str = 'npz',
           overwrite: bool = False, ema: bool = False) -> int:
  """Writes the latest (or best) checkpoint's params (or, with `ema`, their
  EMA); returns their count."""
  _, params, _ = _export(workdir, out, best, fmt, overwrite, ema)
  count = sum(x.size for x in npz.flatten(params).values())
  logging.info('Wrote %d parameters to %s (%s).', count, out, fmt)
  return count


def main(argv):
  del argv
  host.quiet_startup_logs()
  try:
    _, _, code = _export(FLAGS.workdir, FLAGS.out, FLAGS.best, FLAGS.format,
                         FLAGS.overwrite, FLAGS.ema)
  except errors.UserError as e:
    sys.exit(f'Error: {e}')
  print(f'Wrote {FLAGS.out}. To load it:\n')
  print(code)


def run():
  """The `vit-flax-export` command."""
  cli.show_flags_in_help(__name__)
  app.run(main)


if __name__ == '__main__':
  run()
