"""Top-k class predictions for image files, preprocessed as in evaluation.

  python -m vit_flax.predict --workdir=RUN [--checkpoint=best] a.jpg b.png
  python -m vit_flax.predict --checkpoint=model.npz --config=configs/x.py a.jpg
  python -m vit_flax.predict --checkpoint=ViT-B_16.npz --model=ViT-B_16 \
      --class_names_file=labels.txt --json a.jpg

A file that cannot be predicted (missing, not an image, RGBA) gets one
message; the other files are still predicted and the exit status is 1.
"""

import dataclasses
import functools
import json
import math
import re
import sys
from typing import Any, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from etils import epath
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import tensorflow as tf

from vit_flax import checkpoint
from vit_flax import errors
from vit_flax import input_pipeline
from vit_flax import model_configs
from vit_flax import visualize

FLAGS = flags.FLAGS
CHECKPOINT_KINDS = ('best', 'latest')
# Image size when neither the config nor the position embeddings give one.
DEFAULT_IMAGE_SIZE = 224
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


@dataclasses.dataclass
class Prediction:
  """The top classes of one file, or why it has none."""
  path: str
  classes: List[Tuple[int, str, float]] = dataclasses.field(
      default_factory=list)  # (index, name, probability), most likely first.
  error: Optional[str] = None
  image: Optional[np.ndarray] = None  # The model input, (size, size, 3).


def hide_gpus_from_tensorflow():
  """TensorFlow only decodes images: keep it off the accelerators JAX uses."""
  tf.config.set_visible_devices([], 'GPU')


# The model.


def pixels_per_patch(model_config) -> Optional[int]:
  """Patch size times the stride of a hybrid's ResNet root, if known."""
  patches = model_config.get('patches')
  if patches is None:
    return None
  stride = 1
  resnet = model_config.get('resnet')
  if resnet is not None:
    # Strided 7x7 conv and max-pool, then stride 2 in each later stage.
    stride = 4 * 2**(len(resnet['num_layers']) - 1)
  return patches['size'][0] * stride


def native_image_size(model_config, params) -> Optional[int]:
  """The square image size the stored position embeddings fit, if known."""
  posemb = visualize.find_param(params, 'pos_embedding')
  pixels = pixels_per_patch(model_config)
  if posemb is None or pixels is None:
    return None
  classifier = model_config.get('classifier', 'token')
  patches = posemb.shape[1] - (
      1 if classifier in visualize.TOKEN_CLASSIFIERS else 0)
  side = math.isqrt(max(patches, 0))
  return side * pixels if side * side == patches and side else None


def num_classes_of(params) -> int:
  """Classes of the checkpoint's head (0 without one)."""
  head = params.get('head', {})
  return int(np.shape(head['kernel'])[-1]) if 'kernel' in head else 0


def check_params(model: nn.Module, params, image_size: int, source: str):
  """Raises CheckpointError unless `params` fit the model (names, shapes)."""
  expected = jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.key(0),
      jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  )['params']
  checkpoint.inspect_params(params=params, expected=expected)
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  mismatched = [
      f'{key}: checkpoint {np.shape(flat[key])} vs model {tuple(value.shape)}'
      for key, value in flax.traverse_util.flatten_dict(expected,
                                                        sep='/').items()
      if np.shape(flat[key]) != tuple(value.shape)]
  if mismatched:
    raise checkpoint.CheckpointError(
        f'{source} has {len(mismatched)} parameters of other shapes than the '
        f'model: {"; ".join(mismatched[:8])}. Check that the model config '
        '(hidden_size, mlp_dim, num_heads, patches, classifier) is the one '
        'the checkpoint was trained with.')


def dataset_class_names(config, num_classes: int
                        ) -> Tuple[List[str], Optional[str]]:
  """The run's dataset's class names, or the indices and a note why not."""
  dataset = config.get('dataset')
  reason = 'the config names no dataset'
  if dataset:
    try:
      names = input_pipeline.get_source(
          dataset, config.get('tfds_data_dir'),
          config.get('tfds_manual_dir')).class_names
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
  model = model_configs.create_model(config.get('model_type', 'vit'),
                                     model_config, num_classes)
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
                         image_size: Optional[int] = None
                         ) -> InferenceModel:
  """A run's checkpoint, or an `.npz` with a config file or preset.

  Args:
    workdir: a training run directory (with `which` 'best' or 'latest').
    which: 'best' or 'latest' (of `workdir`), or the path of a `.npz`.
    config: the run config to use with a `.npz` (as `--config` loads it).
    model_name: a preset of `model_configs.MODEL_CONFIGS`, instead of config.
    image_size: overrides the config's `pp.crop`.
  """
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
    # The run checkpoints are orbax's; only this path needs that module.
    from vit_flax import checkpointing  # pylint: disable=g-import-not-at-top
    checkpointing.quiet_orbax_logs()
    config, params = checkpointing.restore_for_inference(workdir, which)
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
          f'{", ".join(sorted(model_configs.MODEL_CONFIGS))}).')
    if model_name:
      config = ml_collections.ConfigDict({
          'model_type': model_configs.PRESET_MODEL_TYPES.get(model_name,
                                                             'vit'),
          'model': model_configs.get_model_config(model_name)})
    params = checkpoint.load(which)
    source = f'Checkpoint {which}'
  return build_inference_model(config, params, image_size=image_size,
                               source=source)


# Images.


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
  return np.asarray(
      input_pipeline.preprocess_eval(image, image_size, crop_fraction))


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


# Predictions.


def make_predict_fn(model: nn.Module):
  """Jitted (params, images) -> class probabilities."""

  @jax.jit
  def predict_fn(params, images):
    return jax.nn.softmax(model.apply({'params': params}, images, train=False))

  return predict_fn


def top_classes(probabilities: np.ndarray, k: int, class_names: Sequence[str]
                ) -> List[Tuple[int, str, float]]:
  """The `k` most likely (index, name, probability) of one image."""
  order = np.argsort(-probabilities, kind='stable')[:k]
  return [(int(i), class_names[i], float(probabilities[i])) for i in order]


def predict_files(inference: InferenceModel, paths: Sequence[str], *,
                  class_names: Optional[Sequence[str]] = None, top_k: int = 5,
                  batch_size: int = 32) -> List[Prediction]:
  """Top-k classes of each file, in the order given, in batches.

  Every batch is padded to one shape, so the model compiles once. Files that
  fail get a Prediction with `error` set; the others are still predicted.
  Classes are named by `class_names`, else by their indices.
  """
  classifier = inference.config.model.get('classifier', 'token')
  if inference.num_classes == 0 or classifier not in ('token', 'gap'):
    raise errors.UserError(
        f'This model cannot classify images: it has '
        f'{inference.num_classes} classes and classifier {classifier!r} '
        "(predictions need a head and classifier 'token' or 'gap').")
  if top_k < 1 or batch_size < 1:
    raise errors.UserError(
        f'top_k={top_k} and batch_size={batch_size} must be at least 1.')
  if class_names is None:
    class_names = [str(i) for i in range(inference.num_classes)]
  predict_fn = make_predict_fn(inference.model)
  batch = min(batch_size, len(paths)) or 1
  predictions = []
  for start in range(0, len(paths), batch):
    chunk = paths[start:start + batch]
    results, images = [], []
    for path in chunk:
      try:
        images.append(read_image(path, inference.image_size,
                                 inference.crop_fraction))
        results.append(Prediction(path, image=images[-1]))
      except ImageError as e:
        results.append(Prediction(path, error=str(e)))
    if images:
      padded = np.zeros((batch,) + images[0].shape, np.float32)
      padded[:len(images)] = images
      probabilities = iter(np.asarray(predict_fn(inference.params, padded)))
      for result in results:
        if result.error is None:
          result.classes = top_classes(next(probabilities), top_k,
                                       class_names)
    predictions.extend(results)
  return predictions


def format_text(predictions: Sequence[Prediction]) -> str:
  """One block per predicted file: its path, then ranked classes."""
  blocks = []
  for p in predictions:
    if p.error is None:
      lines = [p.path] + [f'  {rank}. {name} ({index}): {100 * prob:.2f}%'
                          for rank, (index, name, prob) in enumerate(
                              p.classes, 1)]
      blocks.append('\n'.join(lines))
  return '\n'.join(blocks)


def format_json(predictions: Sequence[Prediction]) -> str:
  """A JSON list: {file, predictions: [{class, name, probability}]} or
  {file, error}."""
  items = []
  for p in predictions:
    if p.error is None:
      items.append({'file': p.path, 'predictions': [
          {'class': index, 'name': name, 'probability': prob}
          for index, name, prob in p.classes]})
    else:
      items.append({'file': p.path, 'error': p.error})
  return json.dumps(items, indent=2)


def predictions_grid_figure(predictions: Sequence[Prediction],
                            max_images: int = 64,
                            columns: int = 8) -> np.ndarray:
  """The inputs with their top class and probability, as RGB uint8."""
  shown = [p for p in predictions if p.error is None][:max_images]
  if not shown:
    raise errors.UserError('No image was predicted; there is nothing to show.')
  columns = min(columns, len(shown))
  rows = -(-len(shown) // columns)
  figure = visualize.new_figure(1.7 * columns, 1.9 * rows)
  axes = figure.subplots(rows, columns, squeeze=False).ravel()
  for a, p in zip(axes, shown):
    _, name, probability = p.classes[0]
    a.imshow(visualize.to_display(p.image))
    a.set_title(f'{epath.Path(p.path).name[:20]}\n{name[:20]} '
                f'{100 * probability:.0f}%', fontsize=7)
  for a in axes:
    a.axis('off')
  figure.tight_layout()
  return visualize.figure_to_array(figure)


# CLI.


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


def load_model_from_flags() -> InferenceModel:
  return load_inference_model(
      workdir=FLAGS.workdir, which=FLAGS.checkpoint, config=FLAGS.config,
      model_name=FLAGS.model, image_size=FLAGS.image_size)


def define_flags():
  define_model_flags()
  flags.DEFINE_string('class_names_file', None, 'Class names, one per '
                      "line, in class order; default: the run's dataset's.")
  flags.DEFINE_integer('top_k', 5, 'Classes shown per image.')
  flags.DEFINE_integer('batch_size', 32, 'Images per forward pass.')
  flags.DEFINE_bool('json', False, 'Print JSON instead of text.')
  flags.DEFINE_string('grid', None, 'Also write the images with their top '
                      'class to this PNG file.')


def main(argv):
  hide_gpus_from_tensorflow()
  paths = argv[1:]
  if not paths:
    sys.exit('Error: give the image files to predict, e.g. python -m '
             'vit_flax.predict --workdir=RUN cat.jpg dog.png')
  try:
    inference = load_model_from_flags()
    if FLAGS.class_names_file:
      class_names = read_class_names(FLAGS.class_names_file,
                                     inference.num_classes)
    else:
      class_names, note = dataset_class_names(inference.config,
                                              inference.num_classes)
      if note:
        print(f'Note: {note}', file=sys.stderr)
    predictions = predict_files(inference, paths, class_names=class_names,
                                top_k=FLAGS.top_k, batch_size=FLAGS.batch_size)
  except errors.UserError as e:
    sys.exit(f'Error: {e}')
  failed = [p for p in predictions if p.error is not None]
  for p in failed:
    print(f'Error: {p.error}', file=sys.stderr)
  print(format_json(predictions) if FLAGS.json else format_text(predictions))
  if FLAGS.grid and len(failed) < len(predictions):
    grid = epath.Path(FLAGS.grid)
    grid.parent.mkdir(parents=True, exist_ok=True)
    visualize.write_png(predictions_grid_figure(predictions), grid)
    print(f'Wrote {grid}', file=sys.stderr)
  if failed:
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  app.run(main)
