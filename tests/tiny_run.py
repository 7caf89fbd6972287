"""Runs a tiny training in its own process, for tests that kill, signal or
distribute it. At completion it writes WORKDIR/final.npz.

python tests/tiny_run.py --workdir=DIR --data=DIR [--devices=N] ...

The data is a small random Fashion-MNIST in IDX files under --data (written
on first use). Not `tfds.testing.mock_data`: its mock file system patches
`epath` process-wide during `as_dataset`, which breaks orbax's concurrent
background saves.
"""

import argparse
import json
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument('--workdir', required=True)
parser.add_argument('--data', required=True)
parser.add_argument('--devices', type=int, default=1)
parser.add_argument('--config', default='{}', help='JSON config overrides.')
parser.add_argument('--slow_step', type=float, default=0.0,
                    help='Seconds to sleep per batch (a slower machine).')
parser.add_argument('--slow_commit', type=float, default=0.0,
                    help='Seconds a save waits before it is committed.')
parser.add_argument('--coordinator', default=None)
parser.add_argument('--num_processes', type=int, default=1)
parser.add_argument('--process_id', type=int, default=0)
args = parser.parse_args()

os.environ['XLA_FLAGS'] = (
    f"{os.environ.get('XLA_FLAGS', '')} "
    f'--xla_force_host_platform_device_count={args.devices}')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, 'tests')]

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging
import jax
from jax.experimental import multihost_utils

from vit_flax.configs import common
from vit_flax.data import pipeline
from vit_flax.training import loop
from vit_flax.training import mesh
from vit_flax.weights import npz

from helpers import tiny_model_config
from helpers import write_fashion_mnist


def tiny_config():
  config = common.get_config()
  config.dataset = 'fashion_mnist'
  config.tfds_manual_dir = args.data
  config.pp.crop = 28
  config.model = tiny_model_config(patch=7)
  config.model.transformer.dropout_rate = 0.1  # RNG state must resume too.
  config.optimizer = 'adamw'
  config.optim_dtype = 'float32'
  config.base_lr = 1e-2
  config.batch = 8
  config.batch_eval = 8
  config.total_steps = 60
  config.warmup_steps = 5
  config.eval_every = 20
  config.progress_every = 5
  config.checkpoint_every = 5
  config.checkpoint_every_minutes = 0.0
  config.shuffle_buffer = 64
  config.update(json.loads(args.config))
  return config


def slow_down():
  """Test-only delays, so that kills can land mid-step or mid-save."""
  if args.slow_step:
    batches = pipeline.Pipeline.train_batches

    def slow_batches(self, start_step=0):
      for batch in batches(self, start_step):
        time.sleep(args.slow_step)
        yield batch

    pipeline.Pipeline.train_batches = slow_batches
  if args.slow_commit:
    from orbax.checkpoint._src.path import atomicity
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    def slow_finalize(self, *a, **k):
      time.sleep(args.slow_commit)
      return finalize(self, *a, **k)

    atomicity.AtomicRenameTemporaryPath.finalize = slow_finalize


def main():
  logging.set_verbosity(logging.INFO)
  if args.coordinator:
    jax.distributed.initialize(args.coordinator, args.num_processes,
                               args.process_id)
  slow_down()
  if jax.process_index() == 0:
    write_fashion_mnist(args.data, num_train=64, num_test=24)
  if args.coordinator:  # The others read it once it is there.
    multihost_utils.sync_global_devices('data written')
  config = tiny_config()
  state = loop.train_and_evaluate(config, args.workdir)
  if int(state.step) == config.total_steps:
    # Every process: params split across processes are gathered.
    params = mesh.fetch_params(state.params)
    if jax.process_index() == 0:
      npz.save(params, os.path.join(args.workdir, 'final.npz'))


if __name__ == '__main__':
  main()
