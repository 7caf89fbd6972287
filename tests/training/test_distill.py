"""Tests of vit_flax.distill and distillation in training: losses, teachers,
errors, resume and export of a DeiT student."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vit_flax import errors
from vit_flax.commands import export
from vit_flax.models import presets
from vit_flax.training import distill
from vit_flax.training import loop
from vit_flax.training import mesh
from vit_flax.training import preemption
from vit_flax.training import step as step_lib
from vit_flax.weights import npz

from helpers import small_fashion_mnist_config
from helpers import write_fashion_mnist


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  directory = tmp_path_factory.mktemp('fashion_mnist')
  write_fashion_mnist(str(directory), num_train=64, num_test=24)
  return str(directory)


@pytest.fixture(scope='module')
def teacher(tmp_path_factory, data):
  """The workdir of a trained tiny ResNet: a CNN teacher."""
  workdir = str(tmp_path_factory.mktemp('teacher'))
  config = small_fashion_mnist_config(data, model_type='resnet', total_steps=6)
  config.model = presets.resnet_config(
      'tiny_cnn', num_layers=(1,), bottleneck=False, width_factor=0.25,
      stem='cifar', norm_groups=8)
  loop.train_and_evaluate(config, workdir)
  return workdir


def student_config(data, teacher, **overrides):
  config = small_fashion_mnist_config(data, **overrides)
  config.model.classifier = 'token_distill'
  config.distill.teacher = teacher
  return config


def test_hard_distillation_is_cross_entropy_on_the_teachers_argmax():
  rng = np.random.RandomState(0)
  student = jnp.asarray(rng.randn(6, 5), jnp.float32)
  teacher = jnp.asarray(rng.randn(6, 5), jnp.float32)
  loss = distill.distillation_loss(student, teacher,
                                   distill.DistillOptions(type='hard'))
  want = optax.softmax_cross_entropy_with_integer_labels(
      student, jnp.argmax(teacher, -1))
  np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_soft_distillation_is_kl_at_the_temperature():
  rng = np.random.RandomState(1)
  student = rng.randn(4, 3).astype(np.float32)
  teacher = rng.randn(4, 3).astype(np.float32)
  options = distill.DistillOptions(type='soft', temperature=2.0)
  loss = np.asarray(distill.distillation_loss(student, teacher, options))
  p = np.exp(teacher / 2) / np.exp(teacher / 2).sum(-1, keepdims=True)
  q = np.exp(student / 2) / np.exp(student / 2).sum(-1, keepdims=True)
  np.testing.assert_allclose(loss, 4 * (p * np.log(p / q)).sum(-1),
                             rtol=1e-5)
  same = distill.distillation_loss(teacher, teacher, options)
  np.testing.assert_allclose(same, 0.0, atol=1e-6)
  grad = jax.grad(lambda t: distill.distillation_loss(
      jnp.asarray(student), t, options).sum())(jnp.asarray(teacher))
  assert not np.any(grad)  # The teacher is frozen.


@pytest.mark.parametrize('overrides,message', [
    ({'type': 'medium'}, r"config.distill.type='medium' is not a "
     r'distillation type'),
    ({'alpha': 1.5}, r'config.distill.alpha=1.5 must be in \[0, 1\]'),
    ({'temperature': 0.0}, r'config.distill.temperature=0.0 must be > 0'),
])
def test_bad_distillation_settings_are_clear_errors(data, overrides, message):
  config = small_fashion_mnist_config(data)
  config.distill.teacher = '/some/teacher'
  config.distill.update(overrides)
  with pytest.raises(errors.ConfigError, match=message):
    distill.options_from_config(config)


def test_a_distillation_head_needs_a_teacher(data, tmp_path):
  config = small_fashion_mnist_config(data)
  config.model.classifier = 'token_distill'
  with pytest.raises(errors.ConfigError, match='config.distill.teacher is '
                     'not set'):
    loop.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


@pytest.mark.slow
def test_bad_teachers_are_clear_errors_before_any_work(data, teacher,
                                                       tmp_path):
  workdir = tmp_path / 'run'
  missing = student_config(data, str(tmp_path / 'no_teacher'))
  with pytest.raises(errors.ConfigError, match='does not exist'):
    loop.train_and_evaluate(missing, str(workdir))
  other_size = student_config(data, teacher, pp={'crop': 14})
  with pytest.raises(errors.ConfigError,
                     match=r'trained on 28px images but the student trains '
                     r'on 14px'):
    loop.train_and_evaluate(other_size, str(workdir))
  # The teacher of 10 classes, for a data set of 3.
  with pytest.raises(errors.ConfigError,
                     match=r'has 10 classes but the data set .* has 3'):
    distill.load_teacher(student_config(data, teacher), 3, 28)
  assert not workdir.exists()


@pytest.mark.slow
def test_the_student_learns_and_the_teacher_stays_frozen(data, teacher,
                                                         tmp_path):
  loaded = distill.load_teacher(student_config(data, teacher), 10, 28)
  state = loop.train_and_evaluate(student_config(data, teacher),
                                  str(tmp_path / 'run'))
  for a, b in zip(jax.tree.leaves(state.teacher_params),
                  jax.tree.leaves(loaded.params)):
    np.testing.assert_array_equal(a, b)
  fresh = step_lib.create_train_state(
      presets.create_model_for(student_config(data, teacher), 10),
      optax.sgd(0.0), student_config(data, teacher), 28, mesh.create_mesh())
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(state.params['head_dist']),
      jax.tree.leaves(fresh.params['head_dist'])))
  # Exported, both heads come back.
  out = str(tmp_path / 'student.npz')
  export.export(str(tmp_path / 'run'), out)
  params = npz.load(out)
  assert {'cls', 'dist', 'head', 'head_dist'} <= set(params)
  np.testing.assert_array_equal(params['head_dist']['kernel'],
                                state.params['head_dist']['kernel'])


@pytest.mark.slow
def test_distillation_resumes_bit_for_bit(data, teacher, tmp_path,
                                          monkeypatch):
  def config():
    return student_config(data, teacher, total_steps=6, mixup=0.8,
                          distill={'type': 'soft', 'temperature': 2.0})

  whole = loop.train_and_evaluate(config(), str(tmp_path / 'whole'))
  monkeypatch.setattr(preemption.PreemptionHandler, 'should_stop',
                      lambda handler, step: step == 3)
  loop.train_and_evaluate(config(), str(tmp_path / 'resumed'))
  monkeypatch.undo()
  resumed = loop.train_and_evaluate(config(), str(tmp_path / 'resumed'))
  for a, b in zip(jax.tree.leaves(whole.params),
                  jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(a, b)
