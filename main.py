"""Trains and evaluates a ViT: `python main.py --config=... --workdir=...`."""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from vit_flax import distributed
from vit_flax import errors
from vit_flax import host
from vit_flax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/quickstart.py or '
    'configs/vit_b16_finetune.py:cifar100; fields can be overridden with '
    '--config.field=value.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0, for manual multi-process runs.')
flags.DEFINE_integer('num_processes', None, 'Processes in a manual run.')
flags.DEFINE_integer('process_id', None, 'This process in a manual run.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  host.hide_gpus_from_tensorflow()
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                         FLAGS.process_id)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except errors.UserError as e:
    logging.error('%s', e)
    sys.exit(f'Error: {e}')


if __name__ == '__main__':
  app.run(main)
