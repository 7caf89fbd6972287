"""vit_flax.peers: alternation and ratios (fake peers on a fake clock), rows
and peers from the command line, and a tiny real run without torch.

No timing is asserted: the fake clock makes every figure exact, and the
real run only has to give possible ones.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from vit_flax import errors
from vit_flax.bench import peers

import helpers

REPO = helpers.REPO
TINY_ROW = ('quickstart:image_size=8,patch=4,width=16,depth=1,heads=2,mlp=32,'
            'batch=4')


class FakeClock:
  """Time that moves only when a fake peer runs."""

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def fake_builders(clock, log, step_seconds):
  """Builders of peers that log their calls and take `step_seconds[name]`
  of fake time per step; 'timm' is unavailable."""

  def builder(name):
    def build(row, batch, options, **unused):
      log.append(('build', name, dict(options)))
      assert batch.images.shape == (row.batch, row.image_size,
                                    row.image_size, 3)

      def run_steps(n):
        log.append(('run', name, n))
        clock.now += n * step_seconds[name]

      return peers.PeerRun(run_steps=run_steps, loss=lambda: 1.5,
                           num_params=123)
    return build

  def unavailable(*unused_args, **unused_kwargs):
    raise peers.PeerUnavailable('not installed here')

  return {'vit_flax': builder('vit_flax'), 'vit_jax': builder('vit_jax'),
          'timm': unavailable}


def test_rounds_alternate_and_ratios_compare_with_the_first_peer():
  clock, log = FakeClock(), []
  step_seconds = {'vit_flax': 0.010, 'vit_jax': 0.025}
  row = peers.parse_row(TINY_ROW)
  results = peers.measure_row(
      row, ['vit_flax', 'timm', 'vit_jax:xla_cpu_enable_fast_math=false'],
      rounds=3, steps=4, warmup=2,
      builders=fake_builders(clock, log, step_seconds), clock=clock)

  runs = [entry[1:] for entry in log if entry[0] == 'run']
  # Warm-ups right after each build, then A, B, A, B, A, B.
  assert runs == [('vit_flax', 2), ('vit_jax', 2)] + [
      ('vit_flax', 4), ('vit_jax', 4)] * 3
  assert ('build', 'vit_jax', {'xla_cpu_enable_fast_math': 'false'}) in log

  assert results['reference'] == 'vit_flax'
  figures = results['peers']
  assert figures['timm'] == {'available': False,
                             'reason': 'not installed here'}
  flax, jax_peer = figures['vit_flax'], figures[
      'vit_jax:xla_cpu_enable_fast_math=false']
  assert flax['step_seconds_rounds'] == pytest.approx([0.010] * 3)
  assert jax_peer['img_per_sec_fastest'] == pytest.approx(4 / 0.025)
  assert jax_peer['reference_speedup_fastest'] == pytest.approx(2.5)
  assert jax_peer['reference_speedup_median'] == pytest.approx(2.5)
  assert flax['reference_speedup_fastest'] == 1.0
  assert flax['num_params'] == 123 and flax['loss'] == 1.5


def test_fastest_and_median_rounds():
  clock = FakeClock()
  durations = iter([0.3, 0.1, 0.2, 0.4, 0.6, 0.5])

  def run_steps(n):
    clock.now += next(durations)

  seconds = peers.alternate_rounds({'a': run_steps, 'b': run_steps},
                                   rounds=3, steps=2, clock=clock)
  assert seconds['a'] == pytest.approx([0.15, 0.1, 0.3])
  assert seconds['b'] == pytest.approx([0.05, 0.2, 0.25])
  row = peers.parse_row(TINY_ROW)
  figures = peers.summarize(row, seconds)
  assert figures['a']['step_seconds_fastest'] == pytest.approx(0.1)
  assert figures['a']['step_seconds_median'] == pytest.approx(0.15)
  # At best a takes twice as long as b (0.1 s, 0.05 s); at median less.
  assert figures['b']['reference_speedup_fastest'] == pytest.approx(0.5)
  assert figures['b']['reference_speedup_median'] == pytest.approx(0.2 / 0.15)


def test_rows_take_overrides_and_refuse_bad_ones():
  row = peers.parse_row('ti16:batch=8,image_size=112')
  assert (row.batch, row.image_size, row.patch, row.width) == (8, 112, 16, 192)
  assert peers.parse_row('quickstart') == peers.ROWS['quickstart']
  for spec, message in (('vit_b', "Unknown row 'vit_b'"),
                        ('ti16:batch=0', "Bad override 'batch=0'"),
                        ('ti16:colour=3', "Bad override 'colour=3'"),
                        ('ti16:image_size=100', 'must divide the image size')):
    with pytest.raises(errors.ConfigError, match=message):
      peers.parse_row(spec)


def test_peers_take_options_and_refuse_unknown_ones():
  assert peers.parse_peer('vit_flax:attention_impl=xla,xla_cpu_x=1') == (
      'vit_flax', {'attention_impl': 'xla', 'xla_cpu_x': '1'})
  with pytest.raises(errors.ConfigError, match="Unknown peer 'pytorch'"):
    peers.parse_peer('pytorch')
  with pytest.raises(errors.ConfigError, match="Bad option 'fast'"):
    peers.parse_peer('vit_flax:fast')
  row = peers.parse_row(TINY_ROW)
  with pytest.raises(errors.ConfigError, match=r"Unknown option\(s\) \['lr'\]"):
    peers.vit_flax_config(row, {'lr': '1'})
  with pytest.raises(errors.ConfigError, match=r'Unknown option'):
    peers.build_timm(row, peers.synthetic_batch(row), {'xla_cpu_x': '1'})


def test_missing_torch_and_vit_jax_are_unavailable(monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch fails.
  row = peers.parse_row(TINY_ROW)
  batch = peers.synthetic_batch(row)
  with pytest.raises(peers.PeerUnavailable, match='torch is not importable'):
    peers.build_timm(row, batch, {})
  with pytest.raises(peers.PeerUnavailable, match='--vit_jax_path'):
    peers.build_vit_jax(row, batch, {})
  with pytest.raises(peers.PeerUnavailable, match='no vit_jax/models_vit.py'):
    peers.build_vit_jax(row, batch, {}, vit_jax_path=REPO)


@pytest.mark.slow
def test_command_line_tiny_row_without_torch(tmp_path):
  """vit_flax twice (the second with an XLA compiler option of its own),
  timm without torch, vit_jax without a checkout."""
  blocked = tmp_path / 'torch'
  blocked.mkdir()
  (blocked / '__init__.py').write_text(
      "raise ImportError('torch blocked by the test')\n")
  json_out = tmp_path / 'peers.json'
  result = subprocess.run(
      [sys.executable, '-m', 'vit_flax.bench.peers', f'--row={TINY_ROW}',
       '--peers=vit_flax,vit_flax:xla_cpu_enable_fast_math=false,timm,'
       'vit_jax', '--rounds=2', '--steps=1', '--warmup=1',
       f'--json_out={json_out}'],
      capture_output=True, text=True, cwd=REPO,
      env=dict(os.environ, PYTHONPATH=f'{tmp_path}:{REPO}'))
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  results = json.loads(lines[-1])
  assert json.loads(json_out.read_text()) == results
  table = '\n'.join(lines[:-1])
  assert 'timm ' in table and 'unavailable: torch is not importable' in table
  assert 'vit_jax ' in table and 'unavailable: no checkout given' in table

  (row,) = results['rows']
  assert row['row']['width'] == 16 and row['reference'] == 'vit_flax'
  for spec in ('vit_flax', 'vit_flax:xla_cpu_enable_fast_math=false'):
    figures = row['peers'][spec]
    assert figures['available'] and len(figures['step_seconds_rounds']) == 2
    assert 0 < figures['step_seconds_fastest'] <= figures[
        'step_seconds_median']
    assert math.isfinite(figures['loss'])
    # Patch embedding, class token, positions, one block, norm and head.
    assert figures['num_params'] == (
        4 * 4 * 3 * 16 + 16 + 16 + 5 * 16 + 4 * (16 * 16 + 16) +
        2 * 2 * 16 + (16 * 32 + 32 + 32 * 16 + 16) + 2 * 16 + 16 * 10 + 10)
  assert not row['peers']['timm']['available']
  assert results['host']['host_cpus'] == os.cpu_count()


def test_bad_row_is_a_clear_error():
  result = subprocess.run(
      [sys.executable, '-m', 'vit_flax.bench.peers', '--row=ti16:heads=5'],
      capture_output=True, text=True, cwd=REPO)
  assert result.returncode != 0
  assert 'Error: --row=ti16:heads=5: the patch (16) must divide' in (
      result.stderr)
  assert 'Traceback' not in result.stderr


def test_unknown_compiler_option_is_a_clear_error():
  row = peers.parse_row(TINY_ROW)
  with pytest.raises(errors.ConfigError,
                     match="No such compile option: 'xla_cpu_bogus'"):
    peers.build_vit_flax(row, peers.synthetic_batch(row),
                         {'xla_cpu_bogus': 'true'})
