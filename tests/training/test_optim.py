"""Tests of vit_flax.optim: schedules, weight-decay masks, optimizer choice."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vit_flax import errors
from vit_flax.training import optim


def test_warmup_then_cosine_values():
  schedule = optim.create_learning_rate_schedule(
      total_steps=1100, base_lr=0.03, decay_type='cosine', warmup_steps=100)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(schedule(50), 0.015, rtol=1e-6)
  np.testing.assert_allclose(schedule(100), 0.03, rtol=1e-6)
  # Halfway through the decay, cosine is at half the peak.
  np.testing.assert_allclose(schedule(600), 0.015, rtol=1e-5)
  progress = (850 - 100) / 1000
  np.testing.assert_allclose(
      schedule(850), 0.03 * 0.5 * (1 + math.cos(math.pi * progress)),
      rtol=1e-5)
  np.testing.assert_allclose(schedule(1100), 0.0, atol=1e-9)


def test_warmup_then_linear_values():
  schedule = optim.create_learning_rate_schedule(
      total_steps=300, base_lr=1.0, decay_type='linear', warmup_steps=100,
      linear_end=0.0)
  np.testing.assert_allclose(schedule(25), 0.25, rtol=1e-6)
  np.testing.assert_allclose(schedule(200), 0.5, rtol=1e-6)
  np.testing.assert_allclose(schedule(300), 0.0, atol=1e-7)


def test_unknown_schedule_is_a_clear_error():
  with pytest.raises(errors.ConfigError, match="decay_type 'exp'"):
    optim.create_learning_rate_schedule(10, 0.1, 'exp', 1)


def config(**overrides):
  base = {'optimizer': 'adamw', 'grad_norm_clip': 1.0, 'weight_decay': 0.1,
          'optim_dtype': 'float32', 'momentum': 0.9, 'b1': 0.9, 'b2': 0.999}
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def test_unknown_optimizer_is_a_clear_error():
  with pytest.raises(errors.ConfigError, match="optimizer 'lamb'"):
    optim.create_optimizer(config(optimizer='lamb'), 0.1)


PARAMS = {
    'embedding': {'kernel': jnp.ones((2, 2, 3, 4)), 'bias': jnp.ones(4)},
    'cls': jnp.ones((1, 1, 4)),
    'Transformer': {
        'posembed_input': {'pos_embedding': jnp.ones((1, 5, 4))},
        'encoder_norm': {'scale': jnp.ones(4), 'bias': jnp.ones(4)},
    },
    'head': {'kernel': jnp.ones((4, 3)), 'bias': jnp.ones(3)},
}


def test_weight_decay_only_on_kernels():
  mask = optim.weight_decay_mask(PARAMS)
  assert mask['embedding'] == {'kernel': True, 'bias': False}
  assert mask['head'] == {'kernel': True, 'bias': False}
  assert mask['cls'] is False
  assert mask['Transformer']['posembed_input']['pos_embedding'] is False
  assert not any(mask['Transformer']['encoder_norm'].values())


@pytest.mark.parametrize('name', ['adam', 'adamw'])
def test_zero_gradients_decay_only_kernels(name):
  tx = optim.create_optimizer(config(optimizer=name), 0.1)
  zeros = optax.tree.zeros_like(PARAMS)
  updates, _ = tx.update(zeros, tx.init(PARAMS), PARAMS)
  assert float(jnp.abs(updates['head']['kernel']).max()) > 0
  assert float(jnp.abs(updates['head']['bias']).max()) == 0
  assert float(jnp.abs(updates['cls']).max()) == 0


def test_sgd_momentum_in_bfloat16_and_clipping():
  tx = optim.create_optimizer(
      config(optimizer='sgd', weight_decay=0.0, optim_dtype='bfloat16',
             grad_norm_clip=1.0), 1.0)
  params = {'w': jnp.zeros(4)}
  state = tx.init(params)
  momentum = [s for s in jax.tree.leaves(state) if s.shape == (4,)]
  assert momentum and all(m.dtype == jnp.bfloat16 for m in momentum)
  updates, _ = tx.update({'w': jnp.full(4, 10.0)}, state, params)
  # Clipped to global norm 1, then -lr * g.
  np.testing.assert_allclose(np.linalg.norm(updates['w']), 1.0, rtol=1e-2)


def test_sgd_rejects_weight_decay():
  with pytest.raises(errors.ConfigError, match='weight_decay'):
    optim.create_optimizer(config(optimizer='sgd', weight_decay=0.1), 0.1)
