"""Tests of vit_flax.workdir: checks of the workdir and the one-job lock."""

import os
import signal
import subprocess
import sys

import pytest

from vit_flax import errors
from vit_flax.training import workdir

import helpers

REPO = helpers.REPO
HOLD = '''
import sys, time
from vit_flax.training import workdir
lock = workdir.WorkdirLock(workdir.prepare_workdir(sys.argv[1]))
print('locked', flush=True)
time.sleep(600)
'''


def test_workdir_that_is_a_file_or_under_one(tmp_path):
  (tmp_path / 'file').write_text('x')
  with pytest.raises(errors.ConfigError, match='is a file'):
    workdir.prepare_workdir(str(tmp_path / 'file'))
  with pytest.raises(errors.ConfigError, match='is not writable'):
    workdir.prepare_workdir(str(tmp_path / 'file' / 'run'))


@pytest.mark.slow
def test_a_second_job_is_refused_and_a_killed_ones_lock_is_not_stale(
    tmp_path):
  holder = subprocess.Popen([sys.executable, '-c', HOLD, str(tmp_path)],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    with pytest.raises(workdir.WorkdirInUseError,
                       match=rf'in use by process {holder.pid} on '):
      workdir.WorkdirLock(tmp_path)
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  # The .lock file is still there, but its lock died with its process.
  assert (tmp_path / workdir.LOCK_NAME).exists()
  lock = workdir.WorkdirLock(tmp_path)
  try:
    with pytest.raises(workdir.WorkdirInUseError, match=str(os.getpid())):
      workdir.WorkdirLock(tmp_path)  # Also within one process.
  finally:
    lock.release()
  workdir.WorkdirLock(tmp_path).release()  # Free again.


@pytest.mark.slow
def test_a_training_run_refuses_a_live_workdir(tmp_path):
  from vit_flax.configs import common  # pylint: disable=g-import-not-at-top
  from vit_flax.training import loop  # pylint: disable=g-import-not-at-top

  from helpers import tiny_model_config  # pylint: disable=g-import-not-at-top
  config = common.get_config()
  config.dataset = 'fashion_mnist'
  config.model = tiny_model_config(patch=7)
  config.pp.crop = 28
  config.total_steps, config.warmup_steps = 2, 1
  config.batch = config.batch_eval = 8
  holder = subprocess.Popen([sys.executable, '-c', HOLD, str(tmp_path)],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(workdir.WorkdirInUseError, match='another --workdir'):
      loop.train_and_evaluate(config, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == before  # Nothing written.
  finally:
    holder.kill()
    holder.wait()
