"""Multi-process training through jax.distributed, on one machine.

Two processes of two CPU devices each (cross-process collectives over gloo)
train `tests/tiny_run.py`'s model, each reading its own part of the data, and
must match one process of four devices. A SIGTERM to one of them stops
both at the same step, with a checkpoint; they resume from it.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from vit_flax.configs import common
from vit_flax.data import pipeline as pipeline_lib
from vit_flax.training import checkpointing
from vit_flax.weights import npz

import helpers
from helpers import final_params
from helpers import read_scalars
from helpers import write_fashion_mnist

TESTS = helpers.TESTS
# One batch holds the whole training set, so the two topologies see the same
# examples at every step whatever order each process reads its part in.
NUM_TRAIN = 16
STEPS = 12


def run_config(**overrides):
  """tiny_run.py overrides: deterministic steps whose order can differ."""
  config = {
      'optimizer': 'sgd', 'base_lr': 0.05, 'optim_dtype': 'float32',
      'decay_type': 'constant', 'warmup_steps': 2, 'batch': NUM_TRAIN,
      'batch_eval': 8, 'total_steps': STEPS, 'progress_every': 1,
      'eval_every': 6, 'checkpoint_every': 3, 'shuffle_buffer': NUM_TRAIN,
      'eval_figures': False,
      # The example at each batch position depends on the topology, and
      # augmentation and dropout are keyed by position: both off.
      'pp': {'augment': 'none'},
      # Wide enough for tensors of FSDP_MIN_SIZE elements (split by FSDP).
      'model': {'hidden_size': 64,
                'transformer': {'mlp_dim': 128, 'dropout_rate': 0.0}},
  }
  config.update(overrides)
  return json.dumps(config)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def start_processes(workdir, data, num_processes, devices, config, *flags):
  """Starts tiny_run.py as `num_processes` processes, logging to files."""
  flags = [f'--workdir={workdir}', f'--data={data}', f'--devices={devices}',
           f'--config={config}', *flags]
  if num_processes > 1:
    flags += [f'--coordinator=localhost:{free_port()}',
              f'--num_processes={num_processes}']
  processes = []
  for i in range(num_processes):
    log = f'{workdir}-{time.time_ns()}-process{i}.log'
    with open(log, 'w') as f:
      process = subprocess.Popen(
          [sys.executable, os.path.join(TESTS, 'tiny_run.py'), *flags] +
          ([f'--process_id={i}'] if num_processes > 1 else []),
          stdout=f, stderr=subprocess.STDOUT)
    process.log = log
    processes.append(process)
  return processes


def read_log(process) -> str:
  with open(process.log) as f:
    return f.read()


def wait_for(processes, timeout=240):
  """Their logs once all exit 0. If one fails, the others (which would wait
  for it for minutes) are killed."""
  deadline = time.time() + timeout
  while any(p.poll() is None for p in processes):
    if (any(p.poll() not in (None, 0) for p in processes) or
        time.time() > deadline):
      for p in processes:
        p.kill()
    time.sleep(0.1)
  logs = [read_log(p) for p in processes]
  for i, (p, log) in enumerate(zip(processes, logs)):
    assert p.returncode == 0, f'process {i} of {len(processes)}:\n{log}'
  return logs


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  directory = tmp_path_factory.mktemp('fashion_mnist')
  write_fashion_mnist(str(directory), num_train=NUM_TRAIN, num_test=24)
  return str(directory)


def test_each_process_reads_its_own_part_of_the_data(data):
  config = common.get_config()
  config.dataset = 'fashion_mnist'
  config.tfds_manual_dir = data
  config.pp.augment = 'none'
  config.batch = NUM_TRAIN // 2
  config.total_steps = 2  # One epoch: each process reads its part once.
  seen = []
  for index in range(2):
    pipeline = pipeline_lib.Pipeline(config, index, 2)
    seen.append({image.tobytes() for batch in pipeline.train_batches()
                 for image in batch['image']})
  assert len(seen[0]) == len(seen[1]) == NUM_TRAIN // 2
  assert not seen[0] & seen[1]


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume(tmp_path, data):
  one = str(tmp_path / 'one_process')
  wait_for(start_processes(one, data, 1, 4, run_config()))

  # A SIGTERM to one process stops both at the next collective poll, where
  # they save.
  two = str(tmp_path / 'two_processes')
  processes = start_processes(two, data, 2, 2, run_config(),
                              '--slow_step=0.15')
  while 'step 2/' not in read_log(processes[0]):
    assert processes[0].poll() is None, read_log(processes[0])
    time.sleep(0.05)
  processes[1].send_signal(signal.SIGTERM)
  stop = checkpointing.MULTI_PROCESS_POLL_STEPS
  for log in wait_for(processes):
    assert '10 classes; 4 devices.' in log, log
    assert f'Stopping at step {stop} on request' in log, log
  assert not os.path.exists(os.path.join(two, 'final.npz'))
  assert str(stop) in os.listdir(os.path.join(two, 'checkpoints'))
  # Same topology, now with every large param split across the two
  # processes (FSDP over all 4 devices): orbax reshards on restore, and both
  # processes write their parts of each later checkpoint.
  logs = wait_for(start_processes(two, data, 2, 2,
                                  run_config(eval_figures=True, mesh_fsdp=4)))
  for log in logs:
    assert re.search(rf'Resumed from \S+/{stop}: step {stop}', log), log

  want, got = read_scalars(one), read_scalars(two)
  for tag in ('loss', 'accuracy', 'grad_norm', 'eval_loss', 'eval_accuracy',
              'eval_count'):
    assert sorted(got[tag]) == sorted(want[tag]), tag
    np.testing.assert_allclose([got[tag][s] for s in sorted(got[tag])],
                               [want[tag][s] for s in sorted(want[tag])],
                               rtol=1e-5, err_msg=tag)
  assert want['loss'][STEPS] < 0.5 * want['loss'][1]  # It trained.
  want_params, got_params = final_params(one), final_params(two)
  assert got_params.keys() == want_params.keys()
  for key, value in want_params.items():
    np.testing.assert_allclose(got_params[key], value, rtol=1e-5, atol=1e-6,
                               err_msg=key)
  # The checkpoint of the 2 processes reads into this 1-device process.
  _, restored = checkpointing.restore_for_inference(two)
  for key, value in npz.flatten(restored).items():
    np.testing.assert_array_equal(value, got_params[key], err_msg=key)


@pytest.mark.slow
def test_two_processes_with_the_data_on_the_devices_match_one_process(
    tmp_path, data):
  # Each process puts its half of the data on its two devices (sharded);
  # one batch is the whole training set, so every topology sees the same
  # examples at every step.
  config = run_config(data_on_device=True, total_steps=6, eval_every=3,
                      checkpoint_every=0)
  one = str(tmp_path / 'one_process')
  wait_for(start_processes(one, data, 1, 4, config))
  two = str(tmp_path / 'two_processes')
  for log in wait_for(start_processes(two, data, 2, 2, config)):
    assert 'Data on the devices (sharded): 8 train examples in 4' in log, log
  want, got = read_scalars(one), read_scalars(two)
  assert got['eval_count'] == want['eval_count'] == {3: 24.0, 6: 24.0}
  for tag in ('loss', 'accuracy', 'eval_loss', 'eval_accuracy'):
    np.testing.assert_allclose([got[tag][s] for s in sorted(got[tag])],
                               [want[tag][s] for s in sorted(want[tag])],
                               rtol=1e-5, err_msg=tag)
