"""TensorBoard metrics that stay whole when a run is resumed."""

import glob
import os
import time

import numpy as np

from vit_flax.training import metrics


def write(workdir, steps, value_of, **writer_kwargs):
  writer = metrics.ResumableWriter(workdir, **writer_kwargs)
  writer.write_hparams({'lr': 0.1})
  for step in steps:
    writer.write_scalars(step, {'loss': value_of(step), 'step_x2': 2 * step})
  writer.write_images(steps[-1], {'figure': np.zeros((1, 4, 4, 3),
                                                     np.float32)})
  writer.flush()


def test_a_resumed_run_writes_each_step_once(tmp_path):
  workdir = str(tmp_path)
  write(workdir, range(1, 6), lambda s: 10.0 + s)
  time.sleep(1.1)  # Event file names hold the time in seconds.
  # The resumed run redoes steps 3-5 (its checkpoint was at 2), then goes on.
  write(workdir, range(3, 9), lambda s: 20.0 + s)
  scalars = metrics.read_scalars(workdir)
  assert [s for s, _ in scalars['loss']] == list(range(1, 9))
  # Steps the first run wrote keep its values; the new ones are the second's.
  assert [v for _, v in scalars['loss']] == (
      [11.0, 12.0, 13.0, 14.0, 15.0, 26.0, 27.0, 28.0])
  assert 'lr' not in scalars  # hparams are not scalars of a step.
  steps = metrics.read_steps(workdir)
  assert steps['figure'] == [5, 8]


def test_scalar_events_carry_wall_times_in_order(tmp_path):
  before = time.time()
  write(str(tmp_path), range(1, 4), float)
  events = metrics.read_scalar_events(str(tmp_path))['step_x2']
  assert [(s, v) for s, _, v in events] == [(1, 2.0), (2, 4.0), (3, 6.0)]
  wall_times = [t for _, t, _ in events]
  assert wall_times == sorted(wall_times)
  assert before - 1 <= wall_times[0] <= time.time() + 1


def test_a_record_cut_short_by_a_kill_leaves_the_complete_ones(tmp_path):
  workdir = str(tmp_path)
  write(workdir, range(1, 5), float)
  (path,) = glob.glob(os.path.join(workdir, 'events.out.tfevents*'))
  with open(path, 'rb+') as f:
    f.truncate(os.path.getsize(path) - 5)  # Into the last record.
  scalars = metrics.read_scalars(workdir)
  assert [s for s, _ in scalars['loss']] == [1, 2, 3, 4]


def test_logging_only_writer_writes_no_files(tmp_path):
  # Processes other than 0 log but do not write event files.
  write(str(tmp_path), range(1, 3), float, just_logging=True)
  assert not glob.glob(os.path.join(str(tmp_path), 'events.out.tfevents*'))
