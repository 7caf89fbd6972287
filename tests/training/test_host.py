"""Tests of vit_flax.host: the machine facts benchmarks and reports name."""

import os
import subprocess
import sys

import pytest

from vit_flax.training import host

import helpers

REPO = helpers.REPO


@pytest.mark.parametrize('preload,expected', [
    ('', 'glibc'),
    ('libtcmalloc_minimal.so.4', 'tcmalloc'),  # .ci/run installs it.
])
@pytest.mark.slow
def test_host_allocator_names_the_malloc_in_use(preload, expected):
  result = subprocess.run(
      [sys.executable, '-c',
       'from vit_flax.training import host; print(host.host_allocator())'],
      env=dict(os.environ, LD_PRELOAD=preload), capture_output=True,
      text=True, cwd=REPO, check=True)
  assert result.stdout.split()[-1] == expected


def test_describe_machine_names_cpu_cores_devices_and_malloc():
  machine = host.describe_machine()
  assert host.host_cpu() in machine['CPU']
  assert f'{host.usable_cores()} cores usable' in machine['CPU']
  assert 'cpu' in machine['Devices']
  assert machine['malloc'] == host.host_allocator()


def test_hide_gpus_from_tensorflow_leaves_tensorflow_no_gpu():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  host.hide_gpus_from_tensorflow()
  assert not tf.config.get_visible_devices('GPU')
