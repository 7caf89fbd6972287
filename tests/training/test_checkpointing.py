"""Preemption-safe checkpoints: kill -9, SIGTERM, exact resume, export, errors.

The end-to-end tests run `tests/tiny_run.py` in subprocesses and stop them
from outside, as a preempted VM or an impatient user would.
"""

import errno
import glob
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from vit_flax import errors
from vit_flax.commands import export
from vit_flax.configs import common
from vit_flax.models import presets
from vit_flax.training import checkpointing
from vit_flax.training import loop
from vit_flax.training import mesh as mesh_lib
from vit_flax.training import metrics
from vit_flax.training import optim
from vit_flax.training import preemption
from vit_flax.training import step as step_lib
from vit_flax.weights import npz
from vit_flax.weights import pretrained

import helpers
from helpers import final_params
from helpers import small_fashion_mnist_config as small_config
from helpers import tiny_model_config
from helpers import write_fashion_mnist

TESTS = helpers.TESTS
TOTAL_STEPS = 60  # tiny_run.py's config: checkpoints every 5, evals every 20.


def start(workdir, data, *flags):
  return subprocess.Popen(
      [sys.executable, os.path.join(TESTS, 'tiny_run.py'),
       f'--workdir={workdir}', f'--data={data}', *flags],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def committed_steps(workdir):
  names = glob.glob(os.path.join(workdir, 'checkpoints', '*'))
  return sorted(int(os.path.basename(n)) for n in names
                if os.path.basename(n).isdigit())


def saving_now(workdir):
  return bool(glob.glob(os.path.join(workdir, 'checkpoints',
                                     '*.orbax-checkpoint-tmp*')))


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  directory = tmp_path_factory.mktemp('fashion_mnist')
  write_fashion_mnist(str(directory), num_train=64, num_test=24)
  return str(directory)


@pytest.fixture(scope='module')
def reference(tmp_path_factory, data):
  """An uninterrupted run: its final params and metrics."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  process = start(workdir, data)
  output, _ = process.communicate(timeout=300)
  assert process.returncode == 0, output
  return workdir


def assert_same_run(workdir, reference_workdir):
  """Bit-equal final params; every metric step once, with equal values."""
  want = final_params(reference_workdir)
  got = final_params(workdir)
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  want_events = metrics.read_scalars(reference_workdir)
  got_events = metrics.read_scalars(workdir)
  for tag in ('loss', 'accuracy', 'learning_rate', 'grad_norm', 'eval_loss',
              'eval_accuracy', 'eval_count'):
    steps = [s for s, _ in got_events[tag]]
    assert len(steps) == len(set(steps)), f'{tag}: duplicated steps {steps}'
    assert got_events[tag] == want_events[tag], tag


@pytest.mark.slow
def test_kill_9_at_random_points_resumes_exactly(tmp_path, data, reference):
  workdir = str(tmp_path / 'run')
  rng = random.Random(0)
  kills, kills_during_save, logs = 0, 0, []
  while True:
    process = start(workdir, data, '--slow_step=0.1', '--slow_commit=0.4')
    before = committed_steps(workdir)[-1:] or [0]
    deadline = time.time() + 240
    # First kill: in the middle of a save. Later ones: anywhere.
    target_saving = kills == 0
    delay = rng.uniform(0.5, 3.0)
    killed = False
    while process.poll() is None and time.time() < deadline:
      progressed = (committed_steps(workdir)[-1:] or [0])[0] > before[0]
      if kills < 3 and target_saving and saving_now(workdir) and progressed:
        process.kill()
        kills_during_save += 1
        killed = True
        break
      if kills < 3 and not target_saving and progressed:
        time.sleep(delay)
        process.kill()
        killed = True
        break
      time.sleep(0.02)
    output, _ = process.communicate(timeout=60)
    logs.append(output)
    if not killed:
      assert process.returncode == 0, output
      break
    assert process.returncode == -signal.SIGKILL
    kills += 1
  assert kills >= 3 and kills_during_save >= 1
  # Each restart said where it resumed, and none reused a partial save.
  resumed = [re.search(r'Resumed from \S+/(\d+): step (\d+)', log)
             for log in logs[1:]]
  assert all(resumed), logs
  assert_same_run(workdir, reference)


@pytest.mark.slow
def test_sigterm_saves_at_that_step_and_exits_zero(tmp_path, data, reference):
  workdir = str(tmp_path / 'run')
  rng = random.Random(1)
  stops = 0
  while True:
    process = start(workdir, data, '--slow_step=0.1')
    start_step = (committed_steps(workdir)[-1:] or [0])[0]
    signalled_at = None
    while process.poll() is None:
      if (stops < 2 and signalled_at is None and
          (committed_steps(workdir)[-1:] or [0])[0] > start_step):
        time.sleep(rng.uniform(0.0, 1.5))
        process.send_signal(signal.SIGTERM)
        signalled_at = time.time()
      time.sleep(0.02)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    if signalled_at is None:
      break
    assert time.time() - signalled_at < 15, 'slow to stop'
    stopped = re.search(r'Stopping at step (\d+)', output)
    if stopped is None:  # The signal came after the last step.
      break
    stops += 1
    assert committed_steps(workdir)[-1] == int(stopped.group(1))
  assert stops >= 2
  assert_same_run(workdir, reference)


def test_export_round_trip_gives_the_same_logits(tmp_path, reference):
  config, params = checkpointing.restore_for_inference(reference, 'latest')
  out = str(tmp_path / 'model.npz')
  count = export.export(reference, out)
  assert count == sum(x.size for x in jax.tree.leaves(params))
  model = presets.create_model('vit', config.model, 10)
  images = jax.random.normal(jax.random.key(0), (4, 28, 28, 3))
  init_params = jax.device_get(model.init(jax.random.key(1), images,
                                          train=False)['params'])
  loaded = pretrained.load_pretrained(
      pretrained_path=out, init_params=init_params, model_config=config.model,
      keep_head=True)
  np.testing.assert_array_equal(
      model.apply({'params': loaded}, images, train=False),
      model.apply({'params': params}, images, train=False))
  # The latest checkpoint is the end of training: final.npz has its params.
  for key, value in final_params(reference).items():
    np.testing.assert_array_equal(npz.flatten(params)[key], value)


def test_export_best_is_the_best_evaluation(tmp_path, reference):
  accuracy = {step: value for step, value in
              metrics.read_scalars(reference)['eval_accuracy']}
  best_step = max(accuracy, key=lambda s: (accuracy[s], -s))
  assert os.listdir(os.path.join(reference, 'checkpoints', 'best')) == [
      str(best_step)]
  export.export(reference, str(tmp_path / 'best.npz'), best=True)
  assert npz.load(str(tmp_path / 'best.npz')).keys() == {
      'cls', 'embedding', 'head', 'Transformer'}


# In-process runs on the same data, for config changes and bad input.


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


def test_ema_cannot_be_turned_on_when_resuming(tmp_path, data):
  workdir = str(tmp_path)
  loop.train_and_evaluate(small_config(data), workdir)
  with pytest.raises(errors.CheckpointError, match='config.ema_decay is 0.9'):
    loop.train_and_evaluate(small_config(data, total_steps=6, ema_decay=0.9),
                            workdir)
  with pytest.raises(errors.CheckpointError, match='holds no EMA'):
    checkpointing.restore_for_inference(workdir, 'latest', ema=True)
