"""Preemption: runs of `tests/tiny_run.py` in subprocesses killed (kill -9)
or signalled (SIGTERM) from outside, as a preempted VM or an impatient user
would, resume exactly; the export of such a run gives its model back."""

import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from vit_flax.commands import export
from vit_flax.models import presets
from vit_flax.training import checkpointing
from vit_flax.training import metrics
from vit_flax.weights import npz
from vit_flax.weights import pretrained

import helpers
from helpers import committed_steps
from helpers import final_params
from helpers import saving_now
from helpers import write_fashion_mnist

TESTS = helpers.TESTS


def start(workdir, data, *flags):
  return subprocess.Popen(
      [sys.executable, os.path.join(TESTS, 'tiny_run.py'),
       f'--workdir={workdir}', f'--data={data}', *flags],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


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
    process = start(workdir, data, '--slow_step=0.05', '--slow_commit=0.4')
    before = committed_steps(workdir)[-1:] or [0]
    deadline = time.time() + 240
    # First kill: in the middle of a save. Later ones: anywhere.
    target_saving = kills == 0
    delay = rng.uniform(0.25, 1.5)
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
    process = start(workdir, data, '--slow_step=0.05')
    start_step = (committed_steps(workdir)[-1:] or [0])[0]
    signalled_at = None
    while process.poll() is None:
      if (stops < 2 and signalled_at is None and
          (committed_steps(workdir)[-1:] or [0])[0] > start_step):
        time.sleep(rng.uniform(0.0, 0.75))
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


@pytest.mark.slow
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


