"""Trains and evaluates a model: the `vit-flax-train` command.

vit-flax-train --config=configs/quickstart.py --workdir=/tmp/quickstart

The repository's `main.py` runs the same (`python main.py ...`);
`--print_config` prints every field of the config with what it does. Bad
flags or config files get a one-paragraph error (the traceback with
VIT_FLAX_TRACEBACK=1). A config
file's own imports (`from configs import common`) resolve from the folder
that holds its package, whatever the working directory (see
`vit_flax.cli`).
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from vit_flax import errors
from vit_flax.commands import cli
from vit_flax.training import distributed
from vit_flax.training import host
from vit_flax.training import loop

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/quickstart.py or '
    'configs/vit_b16_finetune.py:cifar100; fields can be overridden with '
    '--config.field=value (--print_config lists them all, each with what it '
    'does).', lock_config=True)
flags.DEFINE_bool('print_config', False, 'Print the resolved config, every '
                  'field with its comment, and exit (no --workdir needed).')
flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
flags.DEFINE_string('coordinator_address', None,
                    'host:port of process 0, for manual multi-process runs.')
flags.DEFINE_integer('num_processes', None, 'Processes in a manual run.')
flags.DEFINE_integer('process_id', None, 'This process in a manual run.')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  host.quiet_startup_logs()
  if FLAGS.print_config:
    print(cli.describe_config(FLAGS.config))
    return
  if not FLAGS.workdir:
    sys.exit('Error: give --workdir, the directory for the run\'s '
             'checkpoints and metrics (created if needed; an existing one '
             'is resumed).')
  host.hide_gpus_from_tensorflow()
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                         FLAGS.process_id)
  try:
    loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except errors.UserError as e:
    logging.error('%s', e)
    sys.exit(f'Error: {e}')


def run():
  """Parses the flags (loading --config) and trains."""
  cli.add_config_roots()
  cli.show_flags_in_help(__name__)
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
