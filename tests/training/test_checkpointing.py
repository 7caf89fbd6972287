"""Checkpoints in process: exact resume, config changes, corrupt and missing
checkpoints, a full disk, divergence, errors. (Runs killed or signalled
from outside: test_preemption.py.)"""

import errno
import glob
import os
import random
import signal
import threading
import time

import jax
import numpy as np
import pytest

from vit_flax import errors
from vit_flax.configs import common
from vit_flax.models import presets
from vit_flax.training import checkpointing
from vit_flax.training import loop
from vit_flax.training import mesh as mesh_lib
from vit_flax.training import optim
from vit_flax.training import preemption
from vit_flax.training import step as step_lib

from helpers import committed_steps
from helpers import saving_now
from helpers import small_fashion_mnist_config as small_config
from helpers import tiny_model_config
from helpers import write_fashion_mnist



@pytest.fixture(scope='module')
def data(tmp_path_factory):
  directory = tmp_path_factory.mktemp('fashion_mnist')
  write_fashion_mnist(str(directory), num_train=64, num_test=24)
  return str(directory)


# In-process runs on the same data, for config changes and bad input.


@pytest.mark.slow
def test_changed_fields_that_cannot_change_are_named(tmp_path, data):
  workdir = str(tmp_path)
  loop.train_and_evaluate(small_config(data), workdir)
  wider = small_config(data)
  wider.model.hidden_size = 32
  with pytest.raises(errors.CheckpointError,
                     match=r'config.model.hidden_size is 32 but the '
                     r'checkpoint was made with 16'):
    loop.train_and_evaluate(wider, workdir)
  with pytest.raises(errors.CheckpointError,
                     match=r'config.batch is 16 but the checkpoint was made '
                     r'with 8'):
    loop.train_and_evaluate(small_config(data, batch=16), workdir)


@pytest.mark.slow
def test_changed_total_steps_is_honoured(tmp_path, data, caplog):
  workdir = str(tmp_path)
  loop.train_and_evaluate(small_config(data), workdir)
  with caplog.at_level('WARNING'):
    state = loop.train_and_evaluate(small_config(data, total_steps=6), workdir)
  assert int(state.step) == 6
  assert committed_steps(workdir)[-1] == 6
  assert any('config.total_steps changed from 4 to 6' in r.getMessage()
             for r in caplog.records)


def truncate_arrays(checkpoint_dir, item='params'):
  """Truncates the array files of a checkpoint, as a disk filling up
  mid-copy would."""
  paths = glob.glob(os.path.join(checkpoint_dir, item, '**', 'd', '*'),
                    recursive=True)
  assert paths
  for path in paths:
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)


def overwrite_arrays(checkpoint_dir, item='params'):
  """Overwrites the array files of a checkpoint with other bytes."""
  for path in glob.glob(os.path.join(checkpoint_dir, item, '**', 'd', '*'),
                        recursive=True):
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
      f.write(bytes(random.Random(0).randrange(256) for _ in range(size)))


def assert_same_params(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
@pytest.mark.parametrize('damage', [truncate_arrays, overwrite_arrays])
def test_a_corrupt_checkpoint_is_set_aside_and_the_run_resumes(
    tmp_path, data, caplog, damage):
  whole = loop.train_and_evaluate(small_config(data, total_steps=6),
                                  str(tmp_path / 'whole'))
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(small_config(data), workdir)  # Checkpoints 2, 4.
  damage(os.path.join(workdir, 'checkpoints', '4'))
  with caplog.at_level('INFO'):
    state = loop.train_and_evaluate(small_config(data, total_steps=6), workdir)
  assert int(state.step) == 6
  warnings = [r.getMessage() for r in caplog.records
              if 'is corrupt' in r.getMessage()]
  assert len(warnings) == 1 and 'checkpoints/corrupt-4' in warnings[0]
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', 'corrupt-4'))
  assert any('Resumed from' in r.getMessage() and '/2:' in r.getMessage()
             for r in caplog.records)
  # From step 2 again, the run ends where an uninterrupted one does.
  assert_same_params(state.params, whole.params)


@pytest.mark.slow
def test_every_checkpoint_corrupt_is_a_clear_error(tmp_path, data):
  workdir = str(tmp_path)
  loop.train_and_evaluate(small_config(data), workdir)
  for step in (2, 4):
    truncate_arrays(os.path.join(workdir, 'checkpoints', str(step)))
  with pytest.raises(errors.CheckpointError,
                     match=r'No checkpoint .* could be restored: all were '
                     r'corrupt and are kept aside .*corrupt-4.*corrupt-2'):
    loop.train_and_evaluate(small_config(data, total_steps=6), workdir)
  assert committed_steps(workdir) == []


@pytest.mark.slow
def test_a_corrupt_best_checkpoint_is_set_aside(tmp_path, data, caplog):
  workdir = str(tmp_path)
  loop.train_and_evaluate(small_config(data, eval_every=2), workdir)
  best = os.path.join(workdir, 'checkpoints', 'best')
  (step,) = os.listdir(best)
  truncate_arrays(os.path.join(best, step))
  with caplog.at_level('WARNING'):
    loop.train_and_evaluate(small_config(data, total_steps=6, eval_every=2),
                            workdir)
  assert os.path.isdir(os.path.join(best, f'corrupt-{step}'))
  assert any('is corrupt' in r.getMessage() and 'best' in r.getMessage()
             for r in caplog.records)
  # A new best was saved after the evaluations of this run.
  assert [n for n in os.listdir(best) if n.isdigit()]


@pytest.mark.slow
def test_a_full_disk_stops_the_run_and_the_previous_checkpoint_resumes(
    tmp_path, data, monkeypatch, caplog):
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top
  whole = loop.train_and_evaluate(small_config(data, total_steps=12),
                                  str(tmp_path / 'whole'))
  workdir = str(tmp_path / 'run')
  finalize = atomicity.AtomicRenameTemporaryPath.finalize
  commits, failed = [], threading.Event()

  def full_after_the_first(self, *args, **kwargs):
    final = self._final_path  # pylint: disable=protected-access
    # The commit of a whole checkpoint (its items commit on their own).
    if final.parent.name == 'checkpoints' and final.name.isdigit():
      commits.append(final.name)
      if len(commits) > 1:
        try:
          raise OSError(errno.ENOSPC, 'No space left on device')
        finally:
          failed.set()
    return finalize(self, *args, **kwargs)

  make_train_step = step_lib.make_train_step
  steps_run = []

  def recording(*args, **kwargs):
    step_fn = make_train_step(*args, **kwargs)

    def step(state, batch):
      steps_run.append(int(state.step) + 1)
      if int(state.step) == 4:  # The save of step 4 is in flight: let it
        failed.wait(60)  # fail before the next step, as a full disk would
        time.sleep(0.5)  # on a slower run.
      return step_fn(state, batch)

    step._cache_size = step_fn._cache_size  # pylint: disable=protected-access
    return step

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, 'finalize',
                      full_after_the_first)
  monkeypatch.setattr(step_lib, 'make_train_step', recording)
  with pytest.raises(errors.CheckpointError,
                     match=r'Saving the checkpoint of step 4 .* failed .*No '
                     r'space left on device.*the disk is full. The checkpoint '
                     r'of step 2 is intact'):
    loop.train_and_evaluate(small_config(data, total_steps=12), workdir)
  monkeypatch.undo()
  # The run stopped at the first step after the failure, not at the next
  # save (step 6), and left no temporary folder behind.
  assert max(steps_run) == 5, steps_run
  assert committed_steps(workdir) == [2]
  assert not saving_now(workdir)
  assert not glob.glob(os.path.join(workdir, 'checkpoints', 'best',
                                    '*.orbax-checkpoint-tmp*'))
  state = loop.train_and_evaluate(small_config(data, total_steps=12), workdir)
  assert int(state.step) == 12
  assert_same_params(state.params, whole.params)


@pytest.mark.slow
def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(
    tmp_path, data, monkeypatch):
  make_train_step = step_lib.make_train_step

  def poisoned(*args, **kwargs):
    step_fn = make_train_step(*args, **kwargs)

    def step(state, batch):
      if int(state.step) == 4:  # NaN params: step 5's loss is NaN.
        state = state.replace(params=jax.tree.map(
            lambda x: x * np.float32('nan'), state.params))
      return step_fn(state, batch)

    step._cache_size = step_fn._cache_size  # pylint: disable=protected-access
    return step

  monkeypatch.setattr(step_lib, 'make_train_step', poisoned)
  workdir = str(tmp_path)
  with pytest.raises(loop.DivergenceError,
                     match=r'Training diverged at step 5: loss nan.*the '
                     r'checkpoint of step 4 is kept as the newest.*lower '
                     r'learning rate'):
    loop.train_and_evaluate(small_config(data, total_steps=8, eval_every=2),
                            workdir)
  assert committed_steps(workdir) == [2, 4]
  best = os.listdir(os.path.join(workdir, 'checkpoints', 'best'))
  assert all(int(n) <= 4 for n in best if n.isdigit())


@pytest.mark.slow
def test_checkpoint_of_another_model_is_a_clear_error(tmp_path, data):
  workdir = str(tmp_path)
  config = small_config(data)
  loop.train_and_evaluate(config, workdir)
  # Same config, other parameter shapes: as if files were copied across runs.
  other = presets.create_model('vit', tiny_model_config(
      patch=7, hidden_size=32), 10)
  mesh = mesh_lib.create_mesh()
  tx = optim.create_optimizer(config, 1e-3)
  state = step_lib.create_train_state(other, tx, config, 28, mesh)
  checkpointer = checkpointing.Checkpointer(workdir)
  with pytest.raises(errors.CheckpointError,
                     match='written by another model or optimizer'):
    checkpointer.restore(state, config)
  checkpointer.close()


def test_checkpoints_path_that_is_a_file(tmp_path, data):
  (tmp_path / 'checkpoints').write_text('not a directory')
  with pytest.raises(errors.UserError, match='is a file'):
    loop.train_and_evaluate(small_config(data), str(tmp_path))


def test_restore_for_inference_errors(tmp_path):
  with pytest.raises(errors.CheckpointError, match='No checkpoints'):
    checkpointing.restore_for_inference(str(tmp_path), 'latest')
  with pytest.raises(errors.CheckpointError, match="'newest'"):
    checkpointing.restore_for_inference(str(tmp_path), 'newest')


def test_a_signal_requests_a_stop_and_a_second_acts_as_usual():
  handler = preemption.PreemptionHandler()
  try:
    assert not handler.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert handler.should_stop(2)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
  finally:
    handler.restore_handlers()


def test_resume_may_rename_the_model_but_not_change_it():
  config = common.get_config()
  config.model = presets.get_model_config('ViT-S_8-depth6')
  saved = checkpointing._json_ready(config)  # pylint: disable=protected-access
  renamed = common.get_config()
  renamed.model = presets.get_model_config('ViT-B_16_reduced')
  checkpointing.check_resumable(saved, renamed)  # No error.
  renamed.model.hidden_size = 192
  with pytest.raises(errors.CheckpointError, match='model.hidden_size'):
    checkpointing.check_resumable(saved, renamed)


def stop_at(step_to_stop):
  """A should_stop that asks to stop after `step_to_stop`, as a SIGTERM."""
  return lambda handler, step: step == step_to_stop


@pytest.mark.slow
def test_ema_and_mixing_resume_bit_for_bit(tmp_path, data, monkeypatch):
  def config():
    return small_config(data, total_steps=8, ema_decay=0.9, mixup=0.8,
                        cutmix=1.0, eval_every=4, checkpoint_every=4,
                        pp=dict(randaugment=(2, 9), random_erase=0.5))

  whole = loop.train_and_evaluate(config(), str(tmp_path / 'whole'))
  monkeypatch.setattr(preemption.PreemptionHandler, 'should_stop',
                      stop_at(3))
  stopped = loop.train_and_evaluate(config(), str(tmp_path / 'resumed'))
  assert int(stopped.step) == 3
  monkeypatch.undo()
  resumed = loop.train_and_evaluate(config(), str(tmp_path / 'resumed'))
  assert int(resumed.step) == 8
  for name in ('params', 'ema_params'):
    for a, b in zip(jax.tree.leaves(getattr(whole, name)),
                    jax.tree.leaves(getattr(resumed, name))):
      np.testing.assert_array_equal(a, b, err_msg=name)
  # The EMA is not the params, and inference reads it.
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(whole.params), jax.tree.leaves(whole.ema_params)))
  _, ema = checkpointing.restore_for_inference(
      str(tmp_path / 'whole'), 'latest', ema=True)
  for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(whole.ema_params)):
    np.testing.assert_array_equal(a, b)
  _, best = checkpointing.restore_for_inference(
      str(tmp_path / 'whole'), 'best', ema=True)
  assert jax.tree.structure(best) == jax.tree.structure(ema)


@pytest.mark.slow
def test_ema_cannot_be_turned_on_when_resuming(tmp_path, data):
  workdir = str(tmp_path)
  loop.train_and_evaluate(small_config(data), workdir)
  with pytest.raises(errors.CheckpointError, match='config.ema_decay is 0.9'):
    loop.train_and_evaluate(small_config(data, total_steps=6, ema_decay=0.9),
                            workdir)
  with pytest.raises(errors.CheckpointError, match='holds no EMA'):
    checkpointing.restore_for_inference(workdir, 'latest', ema=True)
