"""The train command's flag parsing: config-file errors in one paragraph,
and --print_config."""

import os
import subprocess
import sys

import pytest

import helpers
from vit_flax import errors
from vit_flax.commands import cli

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
    # A name that matches no shipped config lists those that ship.
    (['--config=quikstart'], ['quikstart', 'did you mean --config=quickstart',
                              'vit_b16_finetune, vit_b16_reduced']),
])
@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_shipped_configs_are_named_without_a_path_from_any_folder(
    tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  names = cli.shipped_configs()
  assert 'quickstart' in names and 'vit_b16_reduced' in names
  assert 'common' not in names and '__init__' not in names
  for name in names:  # Every name is a config file that loads.
    path = cli.resolve_config(name)
    assert os.path.isfile(path) and path.endswith(f'/{name}.py')
  assert cli.resolve_config('vit_b16_finetune:cifar100') == (
      os.path.join(cli.SHIPPED_CONFIGS_DIR, 'vit_b16_finetune.py') +
      ':cifar100')
  assert cli.load_config_file('vit_b16_finetune:cifar100').dataset == (
      'cifar100')
  # A file of that name where the command runs is the user's own config.
  (tmp_path / 'quickstart.py').write_text('')
  assert cli.resolve_config('quickstart.py') == 'quickstart.py'
  # A path is never taken for a name.
  assert cli.resolve_config('elsewhere/quickstart.py') == (
      'elsewhere/quickstart.py')
  with pytest.raises(errors.ConfigError, match='did you mean '
                     '--config=resnet8_quickstart'):
    cli.load_config_file('resnet8_quickstrat')


@pytest.mark.slow
def test_train_command_takes_a_config_name(tmp_path):
  done = run_main('--config=vit_b16_finetune:cifar100', '--print_config',
                  '--config.total_steps=77')
  assert done.returncode == 0, done.stderr
  assert "dataset = 'cifar100'" in done.stdout
  assert 'total_steps = 77' in done.stdout
