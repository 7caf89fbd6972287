"""Checks of a run config before any work: every field's type and range.

`check_config` raises one `errors.ConfigError` naming the first field whose
value cannot work, the value, and what would be valid, before the workdir
is touched or a device allocates anything. Model configs are checked by the
models themselves when `model_configs.create_model` builds them; this module
checks what would otherwise fail deep inside flax (a width that the heads
cannot split).
"""

import math
import numbers
from typing import Any, Callable, Optional, Tuple

from etils import epath
import ml_collections

from vit_flax import errors
from vit_flax.configs import common
from vit_flax.data import device as device_data
from vit_flax.data import mixup
from vit_flax.training import distill

OPTIM_DTYPES = ('float32', 'bfloat16')
CURRICULUM_UNITS = ('steps', 'epochs')


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
  return (isinstance(value, numbers.Real) and not isinstance(value, bool) and
          math.isfinite(value))


# (field, predicate, what a valid value is, what the field means). Absent
# fields are not checked (configs need not carry every field).
_Rule = Tuple[str, Callable[[Any], bool], str, str]
RULES: Tuple[_Rule, ...] = (
    ('total_steps', lambda v: _is_int(v) and v >= 1, 'an integer >= 1',
     'training steps'),
    ('warmup_steps', lambda v: _is_int(v) and v >= 0, 'an integer >= 0',
     'linear warm-up steps'),
    ('batch', lambda v: _is_int(v) and v >= 1, 'an integer >= 1',
     'the global training batch, over all devices and processes'),
    ('batch_eval', lambda v: _is_int(v) and v >= 1, 'an integer >= 1',
     'the global evaluation batch'),
    ('accum_steps', lambda v: _is_int(v) and v >= 1, 'an integer >= 1',
     'sequential chunks each batch is split into'),
    ('mesh_fsdp', lambda v: _is_int(v) and v >= 1, 'an integer >= 1',
     'devices each large tensor is split over'),
    ('base_lr', lambda v: _is_real(v) and v >= 0, 'a number >= 0',
     'the peak learning rate'),
    ('grad_norm_clip', lambda v: _is_real(v) and v >= 0,
     'a number >= 0 (0: no clipping)', 'the global gradient-norm clip'),
    ('momentum', lambda v: _is_real(v) and 0 <= v < 1, 'a number in [0, 1)',
     "SGD's momentum"),
    ('b1', lambda v: _is_real(v) and 0 <= v < 1, 'a number in [0, 1)',
     "Adam's beta1"),
    ('b2', lambda v: _is_real(v) and 0 <= v < 1, 'a number in [0, 1)',
     "Adam's beta2"),
    ('weight_decay', lambda v: _is_real(v) and v >= 0, 'a number >= 0',
     'the weight decay'),
    ('muon.beta', lambda v: _is_real(v) and 0 <= v < 1, 'a number in [0, 1)',
     "Muon's momentum"),
    ('muon.nesterov', lambda v: isinstance(v, bool), 'True or False',
     "whether Muon's momentum is Nesterov's"),
    ('muon.ns_steps', lambda v: _is_int(v) and v >= 1, 'an integer >= 1',
     "Muon's Newton-Schulz iterations"),
    ('muon.consistent_rms', lambda v: _is_real(v) and v > 0, 'a number > 0',
     "the RMS of Muon's update relative to the learning rate, e.g. 0.2"),
    ('muon.conv_kernels', lambda v: isinstance(v, bool), 'True or False',
     'whether conv kernels get Muon'),
    ('label_smoothing', lambda v: _is_real(v) and 0 <= v < 1,
     'a number in [0, 1)', 'the label smoothing'),
    ('optim_dtype', lambda v: v in OPTIM_DTYPES, f'one of {OPTIM_DTYPES}',
     "the dtype of the optimizer's first moment"),
    ('ema_decay', lambda v: _is_real(v) and 0 <= v < 1,
     'a number in [0, 1) (0: off)', 'the decay of the params\' EMA'),
    ('ema_warmup_power', lambda v: _is_real(v) and v >= 0,
     'a number >= 0 (0: no warm-up)', "the EMA decay's warm-up power"),
    ('eval_every', lambda v: _is_int(v) and v >= 1, 'an integer >= 1',
     'steps between evaluations'),
    ('progress_every', lambda v: _is_int(v) and v >= 1, 'an integer >= 1',
     'steps between progress reports'),
    ('checkpoint_every', lambda v: _is_int(v) and v >= 0,
     'an integer >= 0 (0: no checkpoints)', 'steps between checkpoints'),
    ('checkpoint_every_minutes', lambda v: _is_real(v) and v >= 0,
     'a number >= 0 (0: off)', 'minutes between checkpoints'),
    ('keep_checkpoints', lambda v: _is_int(v) and v >= 1, 'an integer >= 1',
     'the latest checkpoints kept'),
    ('shuffle_buffer', lambda v: _is_int(v) and v >= 1, 'an integer >= 1',
     'examples in the shuffle buffer'),
    ('prefetch', lambda v: _is_int(v) and v >= 0, 'an integer >= 0',
     'batches transferred ahead'),
    ('seed', lambda v: _is_int(v) and v >= 0, 'an integer >= 0',
     'the seed of init, dropout, shuffling and augmentation'),
    ('data_on_device', lambda v: v is True or v is False or v == 'auto',
     "False, True or 'auto'", 'whether the data set is placed on the '
     'devices'),
    ('pp.crop', lambda v: _is_int(v) and v >= 1, 'an integer >= 1',
     'the evaluation image size in pixels'),
    ('pp.random_erase', lambda v: _is_real(v) and 0 <= v <= 1,
     'a probability in [0, 1]', 'the probability of random erasing'),
    ('pp.eval_crop_fraction', lambda v: _is_real(v) and 0 < v <= 1,
     'a number in (0, 1]', 'the central crop kept at evaluation'),
    ('pp.augment_fill', lambda v: _is_real(v) and 0 <= v <= 255,
     'a pixel value in [0, 255]', 'what geometric augmentations fill in'),
    ('pp.curriculum_unit', lambda v: v in CURRICULUM_UNITS,
     f'one of {CURRICULUM_UNITS}', 'the unit of the curriculum starts'),
)


def _get(config, dotted: str):
  """(found, value) of a dotted field."""
  node = config
  for key in dotted.split('.'):
    if node is None or key not in node:
      return False, None
    node = node[key]
  return True, node


def check_config(config: ml_collections.ConfigDict,
                 num_devices: Optional[int] = None) -> None:
  """Raises ConfigError for the first field of `config` that cannot work.

  Args:
    config: a run config (see configs/common.py).
    num_devices: the devices of the run, if known: batches must split over
      them.
  """
  for field in ('dataset', 'total_steps', 'batch', 'batch_eval', 'model'):
    if config.get(field) is None:
      raise errors.ConfigError(
          f'config.{field} is not set; every run needs it (see '
          'configs/common.py and configs/quickstart.py).')
  for field, valid, expected, meaning in RULES:
    found, value = _get(config, field)
    if found and not valid(value):
      raise errors.ConfigError(
          f'config.{field}={value!r} cannot work: it must be {expected} '
          f'({meaning}).')
  if config.get('warmup_steps', 0) >= config.total_steps:
    raise errors.ConfigError(
        f'config.warmup_steps={config.warmup_steps} must be below '
        f'config.total_steps={config.total_steps}: the warm-up must end '
        'before training does; for a short run set both, e.g. '
        f'--config.total_steps={config.total_steps} '
        f'--config.warmup_steps={config.total_steps // 10}.')
  _check_muon(config)
  # Their own checks, naming the fields.
  if config.get('data_on_device', False) is True:
    device_data.check_augmentations(config)
  mixup.options_from_config(config)
  distill.options_from_config(config)
  _check_model(config.model)
  if num_devices is not None:
    _check_devices(config, num_devices)
  if config.get('pretrained_path'):
    if not epath.Path(config.pretrained_path).exists():
      raise errors.ConfigError(
          f'config.pretrained_path {config.pretrained_path} does not '
          'exist; download an official checkpoint (e.g. gs://vit_models/'
          'imagenet21k/ViT-B_16.npz) or fix the path.')


def _check_muon(config) -> None:
  """Fields of one optimizer set for another: a mistake, said plainly."""
  defaults = common.get_config()
  muon = config.get('muon') or {}
  unknown = sorted(set(muon) - set(defaults.muon))
  if unknown:
    raise errors.ConfigError(
        f'config.muon.{unknown[0]} is not a Muon field; the fields are '
        f'{sorted(defaults.muon)} (configs/common.py).')
  if config.get('optimizer') == 'muon':
    momentum = config.get('momentum', defaults.momentum)
    if momentum != defaults.momentum:
      raise errors.ConfigError(
          f'config.momentum={momentum!r} is SGD\'s momentum, which '
          "optimizer='muon' does not use: Muon's momentum is "
          f'config.muon.beta (default {defaults.muon.beta}), and the AdamW '
          "half's is config.b1. Set momentum back to "
          f'{defaults.momentum} and set the one you meant.')
    return
  changed = sorted(name for name in muon if muon[name] != defaults.muon[name])
  if changed:
    raise errors.ConfigError(
        f'config.muon.{changed[0]}={muon[changed[0]]!r} is set but '
        f"config.optimizer={config.get('optimizer')!r}: the muon fields are "
        "used only with optimizer='muon'. Set optimizer='muon', or leave "
        'config.muon at its defaults (configs/common.py).')


def _check_model(model) -> None:
  """What flax would reject deep in a traceback, said plainly."""
  hidden, transformer = model.get('hidden_size'), model.get('transformer')
  if transformer is None or hidden is None:
    return  # Not a ViT (ResNet, Mixer, staged): their modules check.
  heads = transformer.get('num_heads')
  for name, value in (('hidden_size', hidden), ('transformer.num_heads', heads),
                      ('transformer.mlp_dim', transformer.get('mlp_dim')),
                      ('transformer.num_layers',
                       transformer.get('num_layers'))):
    if value is not None and not (_is_int(value) and value >= 1):
      raise errors.ConfigError(
          f'config.model.{name}={value!r} must be an integer >= 1.')
  if heads and hidden % heads:
    divisors = [h for h in range(1, min(hidden, 64) + 1) if hidden % h == 0]
    raise errors.ConfigError(
        f'config.model.hidden_size={hidden} cannot be split over '
        f'config.model.transformer.num_heads={heads} attention heads: the '
        f'width must be a multiple of the head count (heads that divide '
        f'{hidden}: {divisors}).')
  for name in ('dropout_rate', 'attention_dropout_rate'):
    value = transformer.get(name)
    if value is not None and not (_is_real(value) and 0 <= value < 1):
      raise errors.ConfigError(
          f'config.model.transformer.{name}={value!r} must be a rate in '
          '[0, 1).')


def _check_devices(config, num_devices: int) -> None:
  fsdp = config.get('mesh_fsdp', 1)
  if num_devices % fsdp:
    raise errors.ConfigError(
        f'config.mesh_fsdp={fsdp} must be >= 1 and divide the device count '
        f'({num_devices}); e.g. mesh_fsdp=1 (params replicated)' +
        (f' or {num_devices} (every device holds a part).'
         if num_devices > 1 else '.'))
  accum = config.get('accum_steps', 1)
  if config.batch % (num_devices * accum):
    raise errors.ConfigError(
        f'config.batch={config.batch} must be divisible by the device count '
        f'({num_devices}) times accum_steps ({accum}); e.g. use batch='
        f'{max(1, config.batch // (num_devices * accum)) * num_devices * accum}.'
    )
  if config.batch_eval % num_devices:
    raise errors.ConfigError(
        f'config.batch_eval={config.batch_eval} must be divisible by the '
        f'device count ({num_devices}).')
