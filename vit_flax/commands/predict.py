"""Top-k class predictions for image files, preprocessed as in evaluation.

  python -m vit_flax.predict --workdir=RUN [--checkpoint=best] a.jpg b.png
  python -m vit_flax.predict --checkpoint=model.npz --config=configs/x.py a.jpg
  python -m vit_flax.predict --checkpoint=ViT-B_16.npz --model=ViT-B_16 \
      --class_names_file=labels.txt --json a.jpg

A file that cannot be predicted (missing, not an image, RGBA) gets one
message; the other files are still predicted and the exit status is 1.
"""

import dataclasses
import json
import sys
from typing import List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from etils import epath
import flax.linen as nn
import jax
import numpy as np

from vit_flax import errors
from vit_flax.commands import inference
from vit_flax.figures import plotting
from vit_flax.training import host

FLAGS = flags.FLAGS
# Classifiers that give one logit vector per image ('token_distill': the
# mean of its two heads, as DeiT predicts).
CLASSIFIERS = ('token', 'gap', 'token_distill')


@dataclasses.dataclass
class Prediction:
  """The top classes of one file, or why it has none."""
  path: str
  classes: List[Tuple[int, str, float]] = dataclasses.field(
      default_factory=list)  # (index, name, probability), most likely first.
  error: Optional[str] = None
  image: Optional[np.ndarray] = None  # The model input, (size, size, 3).


# The model.


# Images.


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


def predict_files(loaded: inference.InferenceModel, paths: Sequence[str], *,
                  class_names: Optional[Sequence[str]] = None,
                  top_k: int = 5, batch_size: int = 32) -> List[Prediction]:
  """Top-k classes of each file, in the order given, in batches.

  Every batch is padded to one shape, so the model compiles once. Files that
  fail get a Prediction with `error` set; the others are still predicted.
  Classes are named by `class_names`, else by their indices.
  """
  classifier = loaded.config.model.get('classifier', 'token')
  if loaded.num_classes == 0 or classifier not in CLASSIFIERS:
    raise errors.UserError(
        f'This model cannot classify images: it has '
        f'{loaded.num_classes} classes and classifier {classifier!r} '
        f'(predictions need a head and a classifier of {CLASSIFIERS}).')
  if top_k < 1 or batch_size < 1:
    raise errors.UserError(
        f'top_k={top_k} and batch_size={batch_size} must be at least 1.')
  if class_names is None:
    class_names = [str(i) for i in range(loaded.num_classes)]
  predict_fn = make_predict_fn(loaded.model)
  batch = min(batch_size, len(paths)) or 1
  predictions = []
  for start in range(0, len(paths), batch):
    chunk = paths[start:start + batch]
    results, images = [], []
    for path in chunk:
      try:
        images.append(inference.read_image(path, loaded.image_size,
                                           loaded.crop_fraction))
        results.append(Prediction(path, image=images[-1]))
      except inference.ImageError as e:
        results.append(Prediction(path, error=str(e)))
    if images:
      padded = np.zeros((batch,) + images[0].shape, np.float32)
      padded[:len(images)] = images
      probabilities = iter(np.asarray(predict_fn(loaded.params, padded)))
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
  figure = plotting.new_figure(1.7 * columns, 1.9 * rows)
  axes = figure.subplots(rows, columns, squeeze=False).ravel()
  for a, p in zip(axes, shown):
    _, name, probability = p.classes[0]
    a.imshow(plotting.to_display(p.image))
    a.set_title(f'{epath.Path(p.path).name[:20]}\n{name[:20]} '
                f'{100 * probability:.0f}%', fontsize=7)
  for a in axes:
    a.axis('off')
  figure.tight_layout()
  return plotting.figure_to_array(figure)


# The command.


def define_flags():
  """The command's flags (`--help` lists the model flags too)."""
  inference.define_model_flags()
  flags.adopt_module_key_flags(inference)
  flags.DEFINE_string('class_names_file', None, 'Class names, one per '
                      "line, in class order; default: the run's dataset's.")
  flags.DEFINE_integer('top_k', 5, 'Classes shown per image.')
  flags.DEFINE_integer('batch_size', 32, 'Images per forward pass.')
  flags.DEFINE_bool('json', False, 'Print JSON instead of text.')
  flags.DEFINE_string('grid', None, 'Also write the images with their top '
                      'class to this PNG file.')


def main(argv):
  host.quiet_startup_logs()
  host.hide_gpus_from_tensorflow()
  paths = argv[1:]
  if not paths:
    sys.exit('Error: give the image files to predict, e.g. python -m '
             'vit_flax.predict --workdir=RUN cat.jpg dog.png')
  try:
    loaded = inference.load_model_from_flags()
    if FLAGS.class_names_file:
      class_names = inference.read_class_names(FLAGS.class_names_file,
                                               loaded.num_classes)
    else:
      class_names, note = inference.dataset_class_names(loaded.config,
                                                        loaded.num_classes)
      if note:
        print(f'Note: {note}', file=sys.stderr)
    predictions = predict_files(loaded, paths, class_names=class_names,
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
    plotting.write_png(predictions_grid_figure(predictions), grid)
    print(f'Wrote {grid}', file=sys.stderr)
  if failed:
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  app.run(main)
