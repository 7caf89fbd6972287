"""`pip install .` gives a package and commands that work from any folder."""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
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
       'import vit_flax, vit_flax.weights.pytorch_read; '
       'print(vit_flax.__file__)'],
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


@pytest.mark.slow
def test_installed_commands_take_shipped_config_names(venv, tmp_path):
  bin_dir, elsewhere = venv
  done = subprocess.run(
      [str(bin_dir / 'vit-flax-train'), '--config=vit_b16_finetune:cifar100',
       '--print_config'], capture_output=True, text=True, cwd=elsewhere,
      timeout=300)
  assert done.returncode == 0, done.stderr
  assert "dataset = 'cifar100'" in done.stdout
  done = subprocess.run(
      [str(bin_dir / 'vit-flax-train'), '--config=quickstart',
       f'--workdir={tmp_path}', '--config.accum_steps=0'],
      capture_output=True, text=True, cwd=elsewhere, timeout=300)
  assert 'Error: config.accum_steps=0 cannot work' in done.stderr, done.stderr
  # The shipped file is the installed package's, not the repository's.
  done = subprocess.run(
      [str(bin_dir / 'python'), '-c', 'from vit_flax.commands import cli; '
       "print(cli.resolve_config('quickstart'))"],
      capture_output=True, text=True, cwd=elsewhere, check=True)
  assert 'site-packages' in done.stdout and REPO not in done.stdout


def test_vit_jax_names_keep_working():
  # pylint: disable=g-import-not-at-top
  from vit_flax import checkpoint
  from vit_flax import model_configs
  from vit_flax import models
  for name in ('VisionTransformer', 'Encoder', 'Encoder1DBlock',
               'AddPositionEmbs', 'MlpBlock'):
    assert isinstance(getattr(models, name), type), name
  config = model_configs.get_model_config('ViT-B_16')
  model = models.VisionTransformer(num_classes=10, **config)
  assert model.hidden_size == 768
  assert callable(checkpoint.load_pretrained)
  posemb = checkpoint.interpolate_posembed(
      np.zeros((1, 1 + 4, 8), np.float32), 1 + 16, has_class_token=True)
  assert posemb.shape == (1, 17, 8)


def test_where_to_change_what_names_paths_that_exist():
  with open(os.path.join(REPO, 'README.md')) as f:
    readme = f.read()
  table = readme.split('## Where to change what')[1].split('\n## ')[0]
  paths = re.findall(r'`((?:vit_flax|experiments|tests)/[\w/<>.]*)`', table)
  assert len(paths) >= 10, table
  for path in paths:
    if '<' in path:  # A pattern such as vit_flax/configs/<name>.py.
      path = os.path.dirname(path)
    assert os.path.exists(os.path.join(REPO, path)), path
  for module in re.findall(r'`(\w+\.py)`', table):
    found = [root for root, _, files in os.walk(os.path.join(REPO, 'vit_flax'))
             if module in files]
    assert found, module
