"""The train command's flag parsing: config-file errors in one paragraph,
and --print_config."""

import os
import subprocess
import sys

import pytest

import helpers

REPO = helpers.REPO


def run_main(*args, env=None):
  return subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), *args],
                        capture_output=True, text=True, cwd=REPO,
                        env={**os.environ, **(env or {})}, timeout=120)


@pytest.mark.parametrize('args, expected', [
    (['--config=configs/quickstart.py', '--config.nosuchfield=1'],
     ['nosuchfield']),
    (['--config=configs/quickstart.py', '--config.total_step=20'],
     ['total_step', 'total_steps']),  # Did you mean...
    (['--config=configs/nosuch.py'], ['configs/nosuch.py']),
])
def test_bad_config_flags_are_one_paragraph_and_exit_nonzero(
    args, expected, tmp_path):
  done = run_main(*args, f'--workdir={tmp_path}/run')
  assert done.returncode != 0
  error = [line for line in done.stderr.splitlines()
           if line.startswith('Error: ')]
  assert len(error) == 1, done.stderr
  for text in expected:
    assert text in error[0], error[0]
  assert 'Traceback' not in done.stderr
  assert not os.path.exists(tmp_path / 'run')


def test_a_config_with_a_syntax_error_names_the_file_and_line(tmp_path):
  bad = tmp_path / 'broken.py'
  bad.write_text('def get_config():\n  return {\n')
  done = run_main(f'--config={bad}', f'--workdir={tmp_path}/run')
  assert done.returncode != 0
  error = next(line for line in done.stderr.splitlines()
               if line.startswith('Error: '))
  assert 'broken.py' in error and 'line' in error, error
  # The traceback, when asked for.
  done = run_main(f'--config={bad}', f'--workdir={tmp_path}/run',
                  env={'VIT_FLAX_TRACEBACK': '1'})
  assert done.returncode != 0 and 'Traceback' in done.stderr


def test_print_config_lists_every_field_with_its_comment():
  done = run_main('--config=configs/quickstart.py', '--print_config',
                  '--config.total_steps=77')
  assert done.returncode == 0, done.stderr
  lines = done.stdout.splitlines()
  assert 'total_steps = 77' in ' '.join(lines)
  fields = {line.split(' = ')[0] for line in lines if ' = ' in line}
  for name in ('batch', 'base_lr', 'model.hidden_size', 'pp.randaugment',
               'ema_decay', 'model.transformer.stochastic_depth'):
    assert name in fields, name
  commented = [line for line in lines if '  # ' in line]
  assert len(commented) > len(lines) // 2, done.stdout
