"""Exports a run's params as an official `.npz` (what `load_pretrained` reads).

python -m vit_flax.export --workdir=/tmp/run --out=model.npz [--best]
"""

import sys

from absl import app
from absl import flags
from absl import logging

from vit_flax import checkpoint
from vit_flax import train_checkpoints
from vit_flax import errors

flags.DEFINE_string('workdir', None, 'Workdir of a training run.')
flags.DEFINE_string('out', None, 'Path of the .npz to write (gs:// works).')
flags.DEFINE_bool('best', False, 'Export the best evaluated checkpoint '
                  'instead of the latest.')
flags.mark_flags_as_required(['workdir', 'out'])
FLAGS = flags.FLAGS


def export(workdir: str, out: str, best: bool = False) -> int:
  """Writes the params of the latest (or best) checkpoint; returns their count."""
  _, params = train_checkpoints.restore_for_inference(
      workdir, 'best' if best else 'latest')
  checkpoint.save(params, out)
  count = sum(x.size for x in checkpoint.flatten(params).values())
  logging.info('Wrote %d parameters to %s.', count, out)
  return count


def main(argv):
  del argv
  try:
    export(FLAGS.workdir, FLAGS.out, FLAGS.best)
  except errors.UserError as e:
    sys.exit(f'Error: {e}')


if __name__ == '__main__':
  app.run(main)
