"""`pip install .` gives a package and commands that work from any folder."""

import os
import shutil
import subprocess
import sys

import pytest

import helpers
from vit_flax.commands import cli

REPO = helpers.REPO


@pytest.fixture(scope='module')
def venv(tmp_path_factory):
  """A fresh venv (system packages visible) with vit_flax pip-installed."""
  root = tmp_path_factory.mktemp('packaging')
  source = root / 'source'  # A copy: pip writes build files beside it.
  shutil.copytree(os.path.join(REPO, 'vit_flax'), source / 'vit_flax',
                  ignore=shutil.ignore_patterns('__pycache__'))
  for name in ('pyproject.toml', 'README.md'):
    shutil.copy(os.path.join(REPO, name), source / name)
  subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages',
                  str(root / 'venv')], check=True)
  python = str(root / 'venv' / 'bin' / 'python')
  # No index: every dependency must already be met by the tested versions.
  install = subprocess.run(
      [python, '-m', 'pip', 'install', '--no-index', '--no-build-isolation',
       str(source)], capture_output=True, text=True, timeout=600)
  assert install.returncode == 0, install.stdout + install.stderr
  elsewhere = root / 'elsewhere'
  elsewhere.mkdir()
  return root / 'venv' / 'bin', str(elsewhere)


@pytest.mark.slow
def test_installed_package_imports_from_another_folder(venv):
  bin_dir, elsewhere = venv
  done = subprocess.run(
      [str(bin_dir / 'python'), '-c',
       'import vit_flax, vit_flax.weights.pytorch_read; print(vit_flax.__file__)'],
      capture_output=True, text=True, cwd=elsewhere, check=True)
  path = done.stdout.strip()
  assert 'site-packages' in path and not path.startswith(REPO)


@pytest.mark.slow
def test_train_command_loads_a_repository_config_from_another_folder(
    venv, tmp_path):
  bin_dir, elsewhere = venv
  done = subprocess.run(
      [str(bin_dir / 'vit-flax-train'),
       f'--config={REPO}/configs/quickstart.py', f'--workdir={tmp_path}',
       '--config.accum_steps=0'],
      capture_output=True, text=True, cwd=elsewhere, timeout=300)
  # The config (which imports `from configs import common`) loaded, and
  # training refused the bad value with its one-line message.
  assert done.returncode != 0
  assert 'Error: config.accum_steps=0 cannot work' in done.stderr, done.stderr
  assert 'Traceback' not in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize('command', ['vit-flax-export', 'vit-flax-predict',
                                     'vit-flax-visualize'])
def test_other_commands_start(venv, command):
  bin_dir, elsewhere = venv
  done = subprocess.run([str(bin_dir / command), '--helpshort'],
                        capture_output=True, text=True, cwd=elsewhere,
                        timeout=300)
  # absl's help exits with status 1; the command's own flags are listed.
  assert '--workdir' in done.stdout, done.stdout + done.stderr
  assert 'Traceback' not in done.stderr


def test_config_root_is_the_folder_above_the_config_package(tmp_path):
  package = tmp_path / 'project' / 'configs'
  package.mkdir(parents=True)
  (package / '__init__.py').write_text('')
  (package / 'x.py').write_text('')
  (tmp_path / 'loose.py').write_text('')
  assert cli.config_root(f'{package}/x.py:cifar10') == str(
      tmp_path / 'project')
  assert cli.config_root(str(tmp_path / 'loose.py')) == str(tmp_path)
  assert cli.config_arguments(
      ['prog', '--config=a.py:b', '--workdir=w', '--config', 'c.py',
       '--config.seed=1']) == ['a.py:b', 'c.py']


def test_add_config_roots_puts_the_root_first(tmp_path, monkeypatch):
  monkeypatch.setattr(sys, 'path', list(sys.path) + [REPO])
  cli.add_config_roots(['prog', f'--config={REPO}/configs/quickstart.py'])
  assert sys.path[0] == REPO and sys.path.count(REPO) == 1
