"""Models for inference: a run's checkpoint or an `.npz`, and images to feed it.

`load_inference_model` builds the model of a training run (from its
workdir's latest or best checkpoint and the config saved with it) or of an
`.npz` with a config file or preset, and checks that the parameters fit it.
`read_image` preprocesses image files exactly as evaluation does. The
commands `predict` and `visualize` choose their model with the flags of
`define_model_flags`.
"""

import dataclasses
import math
import re
from typing import Any, List, Optional, Sequence, Tuple

from absl import flags
from absl import logging
from etils import epath
import flax.linen as nn
import ml_collections
from ml_collections import config_flags
import numpy as np

from vit_flax import errors
from vit_flax.data import datasets
from vit_flax.data import tensorflow_loader
from vit_flax.models import patch_embed
from vit_flax.models import presets
from vit_flax.models import resnet as resnet_lib
from vit_flax.models import vit
from vit_flax.training import checkpointing
from vit_flax.training import host
from vit_flax.weights import npz

FLAGS = flags.FLAGS
CHECKPOINT_KINDS = ('best', 'latest')
# Image size when neither the config nor the position embeddings give one.
DEFAULT_IMAGE_SIZE = 224
# An image whose shorter side is this many times smaller than the model's
# input gets a warning: upscaled that much, it holds little detail.
SMALL_IMAGE_FACTOR = 4
_CHANNEL_KINDS = {2: 'grayscale with alpha', 4: 'RGBA'}


class ImageError(errors.UserError):
  """An input file that is not an image the model can take."""


@dataclasses.dataclass
class InferenceModel:
  """A model with its parameters and what inference needs to know."""
  model: nn.Module
  params: Any
  config: ml_collections.ConfigDict  # .model; .dataset and .pp when known.
  num_classes: int
  image_size: int
  crop_fraction: float


def pixels_per_patch(model_config) -> Optional[int]:
  """Patch size (or a conv tokenizer's stride) times the stride of a
  hybrid's ResNet root, if known."""
  patches = model_config.get('patches')
  patch_embedding = model_config.get('patch_embedding', 'conv')
  if patches is None and patch_embedding not in patch_embed.TOKENIZERS:
    return None
  stride = 1
  resnet = model_config.get('resnet')
  if resnet is not None:
    stride = resnet_lib.root_stride(resnet['num_layers'],
                                    resnet.get('stem', 'imagenet'))
  return stride * patch_embed.token_stride(
      patch_embedding, model_config.get('tokenizer'),
      None if patches is None else patches['size'])


def native_image_size(model_config, params) -> Optional[int]:
  """The square image size the stored position embeddings fit, if known."""
  posemb = npz.find_param(params, 'pos_embedding')
  pixels = pixels_per_patch(model_config)
  if posemb is None or pixels is None:
    return None
  classifier = model_config.get('classifier', 'token')
  patches = posemb.shape[1] - vit.num_prefix_tokens(classifier)
  side = math.isqrt(max(patches, 0))
  return side * pixels if side * side == patches and side else None


def num_classes_of(params) -> int:
  """Classes of the checkpoint's head (0 without one)."""
  head = params.get('head', {})
  return int(np.shape(head['kernel'])[-1]) if 'kernel' in head else 0


def check_params(model: nn.Module, params, image_size: int, source: str):
  """Raises CheckpointError unless `params` fit the model (names, shapes)."""
  npz.check_fits(
      params, presets.abstract_params(model, image_size), source)


def dataset_class_names(config, num_classes: int
                        ) -> Tuple[List[str], Optional[str]]:
  """The run's dataset's class names, or the indices and a note why not."""
  dataset = config.get('dataset')
  reason = 'the config names no dataset'
  if dataset:
    try:
      names = datasets.source_of(config).class_names
    except (errors.UserError, OSError) as e:
      reason = f'the metadata of dataset {dataset!r} is unavailable ({e})'
    else:
      if len(names) == num_classes:
        return list(names), None
      reason = (f'dataset {dataset!r} has {len(names)} classes but the model '
                f'{num_classes}')
  return [str(i) for i in range(num_classes)], (
      f'Class indices shown instead of names: {reason}. Pass '
      '--class_names_file (one name per line) to name them.')


def read_class_names(path: str, num_classes: int) -> List[str]:
  """One class name per line; as many lines as the model has classes."""
  try:
    lines = epath.Path(path).read_text().splitlines()
  except OSError as e:
    raise errors.UserError(f'Class names file {path} cannot be read ({e}).'
                           ) from e
  names = [line.strip() for line in lines if line.strip()]
  if len(names) != num_classes:
    raise errors.UserError(
        f'Class names file {path} has {len(names)} names but the model has '
        f'{num_classes} classes; give one name per line, in class order.')
  return names


def build_inference_model(config: ml_collections.ConfigDict, params, *,
                          image_size: Optional[int] = None,
                          source: str = 'The checkpoint') -> InferenceModel:
  """Builds the model of `config.model` around `params`, checking they fit.

  Args:
    config: a run config (`model`, `model_type`; `dataset` and `pp` give the
      class names and the evaluation preprocessing when present).
    params: the parameters; their head gives the number of classes.
    image_size: overrides `config.pp.crop` (else the size the position
      embeddings were trained at, else 224).
    source: where the params came from, for error messages.
  """
  model_config = config.get('model')
  if model_config is None:
    raise errors.ConfigError(
        'The config has no model (config.model); give a config file of the '
        'run (--config) or a preset (--model=ViT-B_16).')
  num_classes = num_classes_of(params)
  model = presets.create_model(config.get('model_type', 'vit'), model_config,
                               num_classes)
  pp = config.get('pp')
  native = native_image_size(model_config, params)
  image_size = (image_size or (pp.get('crop') if pp is not None else None) or
                native or DEFAULT_IMAGE_SIZE)
  # Position embeddings are stored at the training size (and resized in the
  # graph), so the shapes are checked at that size.
  check_params(model, params, native or image_size, source)
  return InferenceModel(
      model=model, params=params, config=config, num_classes=num_classes,
      image_size=int(image_size),
      crop_fraction=(pp.get('eval_crop_fraction', 1.0) if pp is not None
                     else 1.0))


def load_inference_model(*, workdir: Optional[str] = None,
                         which: str = 'latest',
                         config: Optional[ml_collections.ConfigDict] = None,
                         model_name: Optional[str] = None,
                         image_size: Optional[int] = None,
                         ema: bool = False) -> InferenceModel:
  """A run's checkpoint, or an `.npz` with a config file or preset.

  Args:
    workdir: a training run directory (with `which` 'best' or 'latest').
    which: 'best' or 'latest' (of `workdir`), or the path of a `.npz`.
    config: the run config to use with a `.npz` (as `--config` loads it).
    model_name: a preset of `presets.MODEL_CONFIGS`, instead of config.
    image_size: overrides the config's `pp.crop`.
    ema: the run's EMA of the params (`config.ema_decay`) instead of them.
  """
  if ema and which not in CHECKPOINT_KINDS:
    raise errors.UserError(
        f'--ema picks the EMA of a training run\'s params, but '
        f'--checkpoint={which} is a file, which holds one set of params; '
        'drop --ema, or give the run with --workdir.')
  if which in CHECKPOINT_KINDS:
    if not workdir:
      raise errors.UserError(
          f'--checkpoint={which} is a checkpoint of a training run: give the '
          'run directory with --workdir, or give the path of an .npz file '
          'with --checkpoint=path/to/model.npz and --config or --model.')
    if config is not None or model_name:
      raise errors.UserError(
          'A run checkpoint (--workdir) carries its own config; --config and '
          '--model are for .npz checkpoints.')
    host.quiet_orbax_logs()
    config, params = checkpointing.restore_for_inference(workdir,
                                                         which,
                                                         ema=ema)
    source = f'The {which} checkpoint of {workdir}'
  else:
    if workdir:
      raise errors.UserError(
          f'--checkpoint={which} is a file: its model comes from --config or '
          f'--model, not --workdir; use --checkpoint=best or latest for the '
          'checkpoints of a run.')
    if (config is None) == (not model_name):
      raise errors.UserError(
          f'The .npz checkpoint {which} holds no model config: give exactly '
          'one of --config=configs/<file>.py (the training config) or '
          '--model=<preset> (one of '
          f'{", ".join(sorted(presets.MODEL_CONFIGS))}).')
    if model_name:
      config = ml_collections.ConfigDict({
          'model_type': presets.PRESET_MODEL_TYPES.get(model_name, 'vit'),
          'model': presets.get_model_config(model_name)
      })
    params = npz.load(which)
    source = f'Checkpoint {which}'
  return build_inference_model(config, params, image_size=image_size,
                               source=source)


def read_image(path: str, image_size: int,
               crop_fraction: float = 1.0) -> np.ndarray:
  """Decodes an image file and preprocesses it exactly as evaluation does.

  Returns:
    float32 (image_size, image_size, 3) in [-1, 1]; grayscale becomes RGB.

  Raises:
    ImageError: the file is missing, not an image, or not RGB/grayscale.
  """
  try:
    data = epath.Path(path).read_bytes()
  except FileNotFoundError as e:
    raise ImageError(f'{path}: no such file.') from e
  except OSError as e:
    raise ImageError(f'{path} cannot be read ({e}).') from e
  # TensorFlow only here: loading a model for training (distillation's
  # teacher) needs none.
  tf = tensorflow_loader.import_tensorflow()
  from vit_flax.data import pipeline  # pylint: disable=g-import-not-at-top
  try:
    image = tf.io.decode_image(data, expand_animations=False)
  except (tf.errors.InvalidArgumentError, ValueError) as e:
    # TensorFlow wraps the reason in op names: {{function_node ...}} [Op:...].
    reason = re.sub(r'\{\{.*?\}\}|\[Op:\w+\]', '',
                    getattr(e, 'message', str(e))).strip()
    raise ImageError(f'{path} is not an image that can be decoded ({reason})'
                     ) from e
  channels = image.shape[-1]
  if channels not in (1, 3):
    raise ImageError(
        f'{path} has {channels} channels ({_CHANNEL_KINDS.get(channels, "?")})'
        '; the model takes RGB images (grayscale is converted to RGB, as in '
        'training). Convert it to RGB first, e.g. PIL.Image.open(path)'
        '.convert("RGB").save(...).')
  height, width = image.shape[0], image.shape[1]
  if min(height, width) * SMALL_IMAGE_FACTOR < image_size:
    logging.warning(
        '%s is %dx%d pixels, far smaller than the model\'s %dx%d input: it '
        'is upscaled, so what the model sees has little detail.', path,
        width, height, image_size, image_size)
  return np.asarray(
      pipeline.preprocess_eval(image, image_size, crop_fraction))


def load_images(paths: Sequence[str], image_size: int, crop_fraction: float
                ) -> Tuple[List[str], np.ndarray, List[Tuple[str, str]]]:
  """(readable paths, their images (n, size, size, 3), (path, error) pairs)."""
  good, images, failures = [], [], []
  for path in paths:
    try:
      images.append(read_image(path, image_size, crop_fraction))
      good.append(path)
    except ImageError as e:
      failures.append((path, str(e)))
  stacked = (np.stack(images) if images else
             np.zeros((0, image_size, image_size, 3), np.float32))
  return good, stacked, failures


def first_eval_image(config, image_size: int,
                     crop_fraction: float) -> Optional[np.ndarray]:
  """The first image of the run's eval split, preprocessed; None if unread."""
  if not config.get('dataset') or config.get('pp') is None:
    return None
  from vit_flax.data import pipeline  # pylint: disable=g-import-not-at-top
  try:
    source = datasets.source_of(config)
    examples, _ = source.read(config.pp.test, 0, 1, drop_remainder=False)
    example = next(iter(examples.take(1)))
  except (errors.UserError, StopIteration) as e:
    logging.info('No eval image of %s: %s', config.dataset, e)
    return None
  image = pipeline.preprocess_eval(source.decode(example['image']), image_size,
                                   crop_fraction)
  return np.asarray(image)


# Flags of the commands that load a model.


def define_model_flags():
  """The flags choosing a model (shared with `vit_flax.visualize`)."""
  flags.DEFINE_string('workdir', None, 'Training run directory.')
  flags.DEFINE_string(
      'checkpoint', 'latest', "'best' or 'latest' checkpoint of --workdir, "
      'or the path of an .npz file (with --config or --model).')
  config_flags.DEFINE_config_file(
      'config', None, 'Config file of the model of an .npz checkpoint, e.g. '
      'configs/quickstart.py (its dataset gives the class names).')
  flags.DEFINE_string('model', None, 'Preset of an .npz checkpoint instead '
                      'of --config, e.g. ViT-B_16.')
  flags.DEFINE_integer('image_size', None, 'Input size; default: the '
                       "config's pp.crop, else the checkpoint's.")
  flags.DEFINE_bool('ema', False, 'The EMA of the params of the --workdir run '
                    '(trained with config.ema_decay) instead of the params.')


def load_model_from_flags() -> InferenceModel:
  return load_inference_model(
      workdir=FLAGS.workdir, which=FLAGS.checkpoint, config=FLAGS.config,
      model_name=FLAGS.model, image_size=FLAGS.image_size, ema=FLAGS.ema)
