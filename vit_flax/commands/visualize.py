"""Figures that look inside a ViT, written as PNGs: attention, embedding
filters, positions (`vit-flax-visualize`).

From a run or from an official `.npz`:

  python -m vit_flax.visualize --workdir=RUN --out=DIR [images...]
  python -m vit_flax.visualize --checkpoint=ViT-B_16.npz --model=ViT-B_16 \
      --out=DIR cat.jpg
"""

import sys
from typing import List, Sequence

from absl import app
from absl import flags
from etils import epath
import numpy as np

from vit_flax import errors
from vit_flax.commands import inference
from vit_flax.figures import plotting
from vit_flax.figures import probe as probe_lib
from vit_flax.training import host

FLAGS = flags.FLAGS


# The command.


def probe_batches(model, params, images: np.ndarray,
                  batch_size: int) -> probe_lib.Probe:
  """`probe_lib.probe` in batches of `batch_size`, joined along the batch."""
  parts = [probe_lib.probe(model, params, images[i:i + batch_size])
           for i in range(0, len(images), batch_size)]
  embeddings = [p.patch_embeddings for p in parts]
  return probe_lib.Probe(
      logits=np.concatenate([p.logits for p in parts]),
      attentions=[np.concatenate(layer) for layer in
                  zip(*[p.attentions for p in parts])],
      patch_embeddings=(None if embeddings[0] is None else
                        np.concatenate(embeddings)))


def unique_names(paths: Sequence[str]) -> List[str]:
  """File stems, numbered where two files share one."""
  names = []
  for path in paths:
    name = epath.Path(path).stem
    names.append(name if name not in names else f'{name}_{len(names)}')
  return names


def define_flags():
  """The command's flags (`--help` lists the model flags too)."""
  inference.define_model_flags()
  flags.adopt_module_key_flags(inference)
  flags.DEFINE_string('out', None, 'Directory for the PNG figures.')
  flags.DEFINE_integer('batch_size', 8, 'Images per forward pass.')
  flags.mark_flags_as_required(['out'])


def main(argv):
  host.quiet_startup_logs()
  host.hide_gpus_from_tensorflow()
  try:
    loaded = inference.load_model_from_flags()
  except errors.UserError as e:
    sys.exit(f'Error: {e}')
  paths = argv[1:]
  good, images, failures = inference.load_images(paths, loaded.image_size,
                                                 loaded.crop_fraction)
  for _, message in failures:
    print(f'Error: {message}', file=sys.stderr)
  names = unique_names(good)
  if not paths:
    image = inference.first_eval_image(loaded.config, loaded.image_size,
                                       loaded.crop_fraction)
    if image is None:
      print('No image files given and no eval image of the run\'s dataset '
            'could be read: writing only the figures of the parameters.',
            file=sys.stderr)
    else:
      names, images = ['eval_image'], image[None]

  out = epath.Path(FLAGS.out)
  out.mkdir(parents=True, exist_ok=True)
  classifier = loaded.config.model.get('classifier', 'token')
  builders = probe_lib.param_figures(
      loaded.params, classifier, loaded.config.model.get('posemb', 'learned'))
  if names:
    probe_result = probe_batches(loaded.model, loaded.params, images,
                                 FLAGS.batch_size)
    for i, name in enumerate(names):
      for figure, build in probe_lib.image_figures(images[i], probe_result, i,
                                                   classifier).items():
        builders[f'{name}_{figure}'] = build
    builders['attention_distance'] = lambda: probe_lib.attention_distance_for(
        probe_result, images.shape[1:3], classifier)
  figures, skipped = probe_lib.build_figures(builders)
  for name, figure in figures.items():
    plotting.write_png(figure, out / f'{name}.png')
    print(f'Wrote {out / name}.png')
  for name, reason in skipped.items():
    print(f'Skipped {name}: {reason}', file=sys.stderr)
  if failures or not figures:
    sys.exit(1)


if __name__ == '__main__':
  define_flags()
  app.run(main)
