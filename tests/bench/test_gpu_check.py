"""benchmarks/gpu.sh --dry_run and the benchmark command, where TensorFlow,
TFDS and clu cannot be imported (as on a bare GPU image)."""

import json
import os
import subprocess
import sys

import pytest

from vit_flax.bench import gpu_check

import helpers


def without_tensorflow(tmp_path):
  """The environment of a process in which TensorFlow, TFDS and clu fail to
  import (a sitecustomize first on the path)."""
  site = tmp_path / 'no_tensorflow'
  site.mkdir()
  (site / 'sitecustomize.py').write_text(
      'import sys\n'
      "for name in ('tensorflow', 'tensorflow_datasets', 'clu'):\n"
      '  sys.modules[name] = None\n')
  return dict(os.environ, PYTHONPATH=f'{site}{os.pathsep}{helpers.REPO}',
              PYTHON=sys.executable)


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_part_without_tensorflow(tmp_path):
  out = tmp_path / 'out'
  result = subprocess.run(
      ['sh', os.path.join('benchmarks', 'gpu.sh'), '--dry_run',
       f'--out_dir={out}'], capture_output=True, text=True, cwd=helpers.REPO,
      env=without_tensorflow(tmp_path), check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((out / 'gpu_check.json').read_text())
  assert report['machine']['dry_run'] and report['machine']['platform'] == 'cpu'
  assert not report['machine']['tensorflow_installed']
  assert sorted(report['parts']) == sorted(name for name, _, _ in
                                          gpu_check.PARTS)
  for name, part in report['parts'].items():
    assert 'error' not in part and 'skipped' not in part, (name, part)
  for name in ('reduced', 'vit_ti16', 'vit_b16'):
    assert report['parts'][name]['step_img_per_sec_per_device'] > 0
  assert list(report['parts']['cifar_steps']['configs']) == (
      gpu_check.CIFAR_STEP_CONFIGS)
  quickstart = report['parts']['quickstart']
  assert 0 <= quickstart['eval_accuracy'] <= 1
  assert quickstart['wall_seconds'] > 0
  assert report['parts']['input']['device_img_per_sec'] > 0
  assert report['parts']['input']['host_img_per_sec'] is None  # No TF.
  table = (out / 'gpu_check.md').read_text()
  assert 'DRY RUN' in table
  for name in report['parts']:
    assert f'| {name}' in table


def test_unknown_part_is_an_error(tmp_path):
  with pytest.raises(ValueError, match='vit_b32'):
    gpu_check.run(str(tmp_path), dry_run=True, parts=['vit_b32'])


@pytest.mark.slow
def test_benchmark_synthetic_only_runs_without_tensorflow(tmp_path):
  json_out = tmp_path / 'figures.json'
  result = subprocess.run(
      [sys.executable, '-m', 'vit_flax.bench.benchmark',
       '--config=configs/quickstart.py', '--config.batch=4',
       '--config.batch_eval=4', '--config.pp.crop=14',
       '--config.model.transformer.num_layers=1', '--synthetic_only',
       '--steps=1', '--rounds=1', '--warmup=0', '--eval_steps=1',
       '--peak_flops=1e12', f'--json_out={json_out}'],
      capture_output=True, text=True, cwd=helpers.REPO,
      env=without_tensorflow(tmp_path), check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.loads(json_out.read_text())
  assert figures['step_img_per_sec_per_device'] > 0
  assert 'pipeline_img_per_sec' not in figures
