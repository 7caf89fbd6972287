"""Tests of vit_flax.mixup: mixed images, soft targets, accuracy, errors."""

import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from vit_flax import errors
from vit_flax.data import mixup

import helpers

REPO = helpers.REPO
NUM_CLASSES = 10
BATCH = 16
# Few distinct options: each compiles its own Gamma sampler (seconds).
MIXUP = mixup.MixOptions(mixup_alpha=1.0)
CUTMIX = mixup.MixOptions(cutmix_alpha=1.0, label_smoothing=0.2)
ELEM = mixup.MixOptions(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.7,
                        mode='elem', label_smoothing=0.1)


def batch(size=BATCH, height=12, width=10, seed=0):
  """Random images (no two pixels equal) and labels unlike their partners'."""
  rng = np.random.RandomState(seed)
  images = rng.randn(size, height, width, 3).astype(np.float32)
  labels = np.arange(size) % NUM_CLASSES
  return images, labels


mix_batch = jax.jit(mixup.mix_batch, static_argnums=(3, 4))


def mix(options, seed=0, images=None, labels=None):
  if images is None:
    images, labels = batch()
  return jax.device_get(mix_batch(jax.random.PRNGKey(seed), images, labels,
                                  NUM_CLASSES, options))


def box_of(image, own, partner):
  """The pixels `image` takes from `partner` if it is `own` with one
  axis-aligned box of `partner` pasted in (else fails)."""
  from_partner = (image == partner).all(-1)
  np.testing.assert_array_equal(image[~from_partner], own[~from_partner])
  rows, cols = from_partner.any(1), from_partner.any(0)
  np.testing.assert_array_equal(from_partner, np.outer(rows, cols))
  for axis in (rows, cols):  # One interval each, so one box.
    assert np.count_nonzero(np.diff(axis.astype(int))) <= 2
  return from_partner


def kind_of(image, own, partner, weight):
  """'none', 'cutmix' or 'mixup', after checking `image` is that kind of mix
  of `own` and `partner` with the weight `weight` of `own`."""
  if weight == 1:
    np.testing.assert_array_equal(image, own)
    return 'none'
  if ((image == own) | (image == partner)).all():
    in_box = box_of(image, own, partner)
    assert in_box.any()
    np.testing.assert_allclose(weight, 1 - in_box.mean(), rtol=1e-6)
    return 'cutmix'
  np.testing.assert_allclose(image, weight * own + (1 - weight) * partner,
                             rtol=1e-6, atol=1e-6)
  return 'mixup'


def kinds(mixed, images):
  return [kind_of(mixed.images[i], images[i], images[::-1][i],
                  mixed.weight[i]) for i in range(len(images))]


def smooth_onehot(labels, smoothing):
  onehot = np.eye(NUM_CLASSES)[labels]
  return onehot * (1 - smoothing) + smoothing / NUM_CLASSES


def test_mixup_blends_each_image_with_its_partner():
  images, labels = batch()
  mixed = mix(MIXUP, images=images, labels=labels)
  lam = mixed.weight[0]
  assert 0 < lam < 1
  np.testing.assert_array_equal(mixed.weight, np.full(BATCH, lam))
  np.testing.assert_allclose(mixed.images,
                             lam * images + (1 - lam) * images[::-1],
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(mixed.labels, labels)
  np.testing.assert_array_equal(mixed.partner_labels, labels[::-1])


def test_cutmix_pastes_one_box_of_the_partner_in_every_image():
  images, labels = batch()
  mixed = mix(CUTMIX, images=images, labels=labels)
  boxes = [box_of(mixed.images[i], images[i], images[::-1][i])
           for i in range(BATCH)]
  assert boxes[0].any() and not boxes[0].all()
  for box in boxes[1:]:  # One box for the batch.
    np.testing.assert_array_equal(box, boxes[0])
  np.testing.assert_allclose(mixed.weight, 1 - boxes[0].mean(), rtol=1e-6)


def test_lams_are_beta_alpha_alpha_distributed():
  beta_pairs = jax.jit(mixup._beta_pairs, static_argnums=(1, 2))
  small, off, large = jax.device_get(
      beta_pairs(jax.random.PRNGKey(0), (0.2, 0.0, 0.8), 20000))
  assert off is None
  for alpha, lam in ((0.2, small), (0.8, large)):
    assert np.isfinite(lam).all() and lam.min() >= 0 and lam.max() <= 1
    np.testing.assert_allclose(lam.mean(), 0.5, atol=0.01)
    np.testing.assert_allclose(lam.var(), 1 / (4 * (2 * alpha + 1)),
                               rtol=0.05)
  assert np.mean(small < 0.1) > 2 * np.mean(large < 0.1)  # U-shaped.


def test_cutmix_boxes_have_side_sqrt_1_minus_lam_and_clip_at_borders():
  lam = np.full(2000, 0.75, np.float32)  # Side: 0.5 * 32 = 16 pixels.
  boxes = jax.jit(mixup._cutmix_boxes, static_argnums=(2, 3))
  in_box, box_lam = jax.device_get(boxes(jax.random.PRNGKey(0), lam, 32, 32))
  heights = in_box.any(2).sum(1)
  widths = in_box.any(1).sum(1)
  assert heights.max() == widths.max() == 16
  assert 8 <= heights.min() and 8 <= widths.min()  # Centre on the border.
  assert 0.2 < np.mean(heights < 16) < 0.6  # Centres within 8 of a border.
  np.testing.assert_allclose(box_lam, 1 - in_box.mean((1, 2)), rtol=1e-6)
  # Uniform centres: every row is inside some box.
  assert in_box.any((0, 2)).all() and in_box.any((0, 1)).all()


def test_elem_mode_mixes_each_example_its_own_way():
  images, labels = batch()
  mixed = mix(ELEM, images=images, labels=labels)
  found = kinds(mixed, images)
  assert {'none', 'mixup', 'cutmix'} == set(found)
  mixup_weights = {mixed.weight[i] for i in range(BATCH)
                   if found[i] == 'mixup'}
  assert len(mixup_weights) == found.count('mixup')  # A lam per example.
  boxes = {box_of(mixed.images[i], images[i], images[::-1][i]).tobytes()
           for i in range(BATCH) if found[i] == 'cutmix'}
  assert len(boxes) > 1  # A box per example.


@pytest.mark.parametrize('options', [MIXUP, CUTMIX, ELEM],
                         ids=['mixup', 'cutmix', 'elem'])
def test_targets_mix_the_smoothed_labels_with_the_weight(options):
  images, labels = batch()
  smoothing = options.label_smoothing
  for seed in range(3):
    mixed = mix(options, seed=seed, images=images, labels=labels)
    kinds(mixed, images)  # The weight is lam / the area outside the box.
    np.testing.assert_allclose(mixed.targets.sum(1), 1, rtol=1e-6)
    w = mixed.weight[:, None]
    expected = (w * smooth_onehot(labels, smoothing) +
                (1 - w) * smooth_onehot(labels[::-1], smoothing))
    np.testing.assert_allclose(mixed.targets, expected, rtol=1e-6,
                               atol=1e-7)


def test_the_same_key_mixes_the_same_way():
  first, again, other = mix(ELEM, 3), mix(ELEM, 3), mix(ELEM, 4)
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(first.images, other.images)


@pytest.mark.parametrize('options', [
    mixup.MixOptions(mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.0),
    mixup.MixOptions(mixup_alpha=1.0, prob=0.0, mode='elem'),
    mixup.MixOptions(label_smoothing=0.1),  # Both alphas 0.
])
def test_no_mixing_leaves_the_batch_as_it_is(options):
  assert not options.enabled
  images, labels = batch()
  mixed = mix(options, images=images, labels=labels)
  np.testing.assert_array_equal(mixed.images, images)
  np.testing.assert_array_equal(mixed.weight, np.ones(BATCH))
  np.testing.assert_allclose(
      mixed.targets, smooth_onehot(labels, options.label_smoothing),
      rtol=1e-6)


@pytest.mark.parametrize('switch_prob, only', [(0.0, 'mixup'),
                                               (1.0, 'cutmix')])
def test_switch_prob_0_or_1_picks_only_one_kind(switch_prob, only):
  images, labels = batch()
  options = mixup.MixOptions(mixup_alpha=1.0, cutmix_alpha=1.0,
                             switch_prob=switch_prob, mode='elem')
  found = []
  for seed in range(3):
    found += kinds(mix(options, seed, images, labels), images)
  # 'none': lam so close to 1 that the box is empty.
  assert only in found and set(found) <= {only, 'none'}


def test_both_kinds_occur_with_switch_prob_one_half():
  images, labels = batch()
  options = mixup.MixOptions(mixup_alpha=1.0, cutmix_alpha=1.0)
  found = {kinds(mix(options, seed, images, labels), images)[0]
           for seed in range(12)}
  assert found == {'mixup', 'cutmix'}


def test_mixed_accuracy_is_plain_accuracy_when_unmixed():
  images, labels = batch()
  mixed = mix(mixup.MixOptions(mixup_alpha=1.0, prob=0.0), images=images,
              labels=labels)
  logits = np.random.RandomState(1).randn(BATCH, NUM_CLASSES)
  logits[:5, labels[:5]] = 10.0  # Some right, most wrong.
  plain = np.mean(logits.argmax(-1) == labels)
  assert 0 < plain < 1
  np.testing.assert_allclose(mixup.mixed_accuracy(logits, mixed), plain,
                             rtol=1e-6)


def test_mixed_accuracy_weighs_own_and_partner_labels():
  images, labels = batch()
  mixed = mix(ELEM, images=images, labels=labels)
  assert 0 < mixed.weight.min() < 1
  assert not (labels == labels[::-1]).any()
  own = np.eye(NUM_CLASSES)[labels] * 10
  partner = np.eye(NUM_CLASSES)[labels[::-1]] * 10
  other = [min(set(range(NUM_CLASSES)) - {a, b})
           for a, b in zip(labels, labels[::-1])]
  neither = np.eye(NUM_CLASSES)[other] * 10
  np.testing.assert_allclose(mixup.mixed_accuracy(own, mixed),
                             mixed.weight.mean(), rtol=1e-6)
  np.testing.assert_allclose(mixup.mixed_accuracy(partner, mixed),
                             1 - mixed.weight.mean(), rtol=1e-6)
  assert mixup.mixed_accuracy(neither, mixed) == 0


def test_soft_cross_entropy_is_linear_in_the_mix():
  images, labels = batch()
  logits = np.random.RandomState(2).randn(BATCH, NUM_CLASSES)
  mixed = mix(ELEM, images=images, labels=labels)
  assert 0 < mixed.weight.min() < 1
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  own = -(smooth_onehot(labels, ELEM.label_smoothing) * log_probs).sum(-1)
  partner = -(smooth_onehot(labels[::-1], ELEM.label_smoothing) *
              log_probs).sum(-1)
  np.testing.assert_allclose(
      mixup.soft_cross_entropy(logits, mixed.targets),
      mixed.weight * own + (1 - mixed.weight) * partner, rtol=1e-5)


SHARDED_SCRIPT = """
import os, sys
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=2')
sys.path[:0] = [%r, %r, %r]
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import test_mixup
from vit_flax.data import mixup
assert jax.device_count() == 2
# As train.batch_sharding on a 1-D mesh (importing train takes seconds).
sharding = NamedSharding(Mesh(jax.devices(), ('data',)), P('data'))
step = jax.jit(mixup.mix_batch, static_argnums=(3, 4))
images, labels = test_mixup.batch()
key = jax.random.PRNGKey(5)
plain = step(key, images, labels, 10, test_mixup.ELEM)
sharded = step(key, jax.device_put(images, sharding),
               jax.device_put(labels, sharding), 10, test_mixup.ELEM)
assert len(sharded.images.sharding.device_set) == 2
assert set(test_mixup.kinds(jax.device_get(sharded), images)) == {
    'none', 'mixup', 'cutmix'}
for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(sharded)):
  # Exact but for the rounding of XLA's differently fused arithmetic.
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6,
                             atol=1e-6)
print('sharded ok')
"""


@pytest.mark.slow
def test_two_device_mesh_mixes_like_one_device():
  script = SHARDED_SCRIPT % (REPO, helpers.TESTS,
                             os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO,
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'sharded ok' in result.stdout


def test_options_from_config_reads_the_fields():
  assert mixup.options_from_config(ml_collections.ConfigDict()) == (
      mixup.MixOptions())
  assert not mixup.options_from_config(ml_collections.ConfigDict()).enabled
  config = ml_collections.ConfigDict(dict(
      mixup=0.8, cutmix=1.0, mix_prob=0.5, mix_switch_prob=0.25,
      mix_mode='elem', label_smoothing=0.1))
  options = mixup.options_from_config(config)
  assert options == mixup.MixOptions(
      mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.5, switch_prob=0.25,
      mode='elem', label_smoothing=0.1)
  assert options.enabled
  assert mixup.options_from_config(
      ml_collections.ConfigDict(dict(cutmix=1.0))).enabled


@pytest.mark.parametrize('field, value, message', [
    ('mixup', -0.2, 'config.mixup=-0.2 must be a finite number >= 0'),
    ('cutmix', float('nan'), 'config.cutmix=nan must be a finite number'),
    ('cutmix', float('inf'), 'config.cutmix=inf must be a finite number'),
    ('cutmix', '1.0', "config.cutmix='1.0' must be a finite number >= 0"),
    ('mix_prob', 1.5, r'config.mix_prob=1.5 must be a number in \[0, 1\]'),
    ('mix_switch_prob', -0.1, 'config.mix_switch_prob=-0.1 must be'),
    ('label_smoothing', 2.0, 'config.label_smoothing=2.0 must be'),
    ('mix_mode', 'pair', "config.mix_mode='pair' is not a mixing mode; "
     r"expected one of \('batch', 'elem'\)"),
])
def test_bad_config_values_are_clear_errors(field, value, message):
  config = ml_collections.ConfigDict({'mixup': 0.8, field: value})
  with pytest.raises(errors.ConfigError, match=message):
    mixup.options_from_config(config)


def test_bad_options_are_clear_errors():
  with pytest.raises(errors.ConfigError, match="mode='pairs' is not a mixing"):
    mixup.MixOptions(mixup_alpha=1.0, mode='pairs')
  with pytest.raises(errors.ConfigError, match='prob=-1 must be a number in'):
    mixup.MixOptions(mixup_alpha=1.0, prob=-1)
