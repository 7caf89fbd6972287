"""optimizer='muon': which params get Muon, its update, its state, resume."""

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vit_flax import errors
from vit_flax.configs import common
from vit_flax.models import presets
from vit_flax.training import checkpointing
from vit_flax.training import config_checks
from vit_flax.training import loop
from vit_flax.training import mesh as mesh_lib
from vit_flax.training import optim
from vit_flax.training import preemption

from helpers import small_fashion_mnist_config
from helpers import tiny_model_config
from helpers import write_fashion_mnist

BLOCK = 'Transformer/encoderblock_0/'
ATTENTION = BLOCK + 'MultiHeadDotProductAttention_1/'
# The hidden matrices of one encoder block: the MLP's Dense kernels and the
# attention's q/k/v and out kernels.
BLOCK_MATRICES = [BLOCK + 'MlpBlock_3/Dense_0/kernel',
                  BLOCK + 'MlpBlock_3/Dense_1/kernel',
                  ATTENTION + 'key/kernel', ATTENTION + 'out/kernel',
                  ATTENTION + 'query/kernel', ATTENTION + 'value/kernel']
RESNET_CONVS = ['block1/unit1/conv1/kernel', 'block1/unit1/conv2/kernel',
                'block1/unit1/conv3/kernel', 'block1/unit1/conv_proj/kernel']

# (model_type, model config, image size, the params Muon updates): AdamW
# updates all others. One line per model.
LABEL_CASES = {
    'vit': ('vit', tiny_model_config(num_layers=1), 16, BLOCK_MATRICES),
    # The depthwise conv of locality=True (3, 3, 1, mlp_dim) is AdamW's.
    'vit_gap_locality': ('vit', tiny_model_config(
        num_layers=1, classifier='gap', locality=True), 16, BLOCK_MATRICES),
    # The ResNet's convs, as matrices; its root conv (it reads the image)
    # and the 1x1 patch embedding are AdamW's.
    'hybrid': ('vit', tiny_model_config(
        num_layers=1, patch=1,
        resnet={'num_layers': (1,), 'width_factor': 0.5}), 32,
               BLOCK_MATRICES + RESNET_CONVS),
    # pre_logits is a hidden matrix; the tokenizer and both heads are not.
    'vit_spt_distill': ('vit', tiny_model_config(
        num_layers=1, classifier='token_distill', patch_embedding='spt',
        representation_size=8), 16, BLOCK_MATRICES + ['pre_logits/kernel']),
    # CCT: the tokenizer's first conv reads the image, its second is a
    # hidden conv; q/k/v without biases; SeqPool's score is a vector.
    'cct': ('vit', tiny_model_config(
        num_layers=1, classifier='seqpool', patch_embedding='cct',
        tokenizer={'layers': 2, 'width': 8},
        transformer={'mlp_dim': 32, 'num_heads': 2, 'num_layers': 1,
                     'attention_dropout_rate': 0.0, 'dropout_rate': 0.0,
                     'qkv_bias': False}), 16,
            BLOCK_MATRICES + ['tokenizer/conv_1/kernel']),
    # The early-convolution stem: its later convs and 1x1 projection.
    'conv_stem': ('vit', tiny_model_config(
        num_layers=1, classifier='gap', patch_embedding='conv_stem',
        tokenizer={'layers': 2, 'width': 8, 'norm_groups': 4}), 16,
                  BLOCK_MATRICES + ['conv_stem/conv_1/kernel',
                                    'conv_stem/proj/kernel']),
    'resnet': ('resnet', presets.resnet_config(
        'tiny', (1,), width_factor=0.25, norm_groups=8), 16, RESNET_CONVS),
}


def param_labels(model_type, model_config, image_size, conv_kernels=True):
  model = presets.create_model(model_type, model_config, 10)
  labels = optim.muon_labels(presets.abstract_params(model, image_size),
                             conv_kernels)
  return flax.traverse_util.flatten_dict(labels, sep='/')


@pytest.mark.parametrize('case', sorted(LABEL_CASES))
def test_muon_on_the_hidden_matrices_adamw_on_the_rest(case):
  model_type, model_config, image_size, want = LABEL_CASES[case]
  labels = param_labels(model_type, model_config, image_size)
  assert sorted(p for p, label in labels.items()
                if label == 'muon') == sorted(want)
  assert set(labels.values()) == {'muon', 'adam'}


def test_conv_kernels_can_stay_on_adamw():
  model_type, model_config, image_size, _ = LABEL_CASES['hybrid']
  labels = param_labels(model_type, model_config, image_size,
                        conv_kernels=False)
  assert sorted(p for p, label in labels.items()
                if label == 'muon') == BLOCK_MATRICES


def test_vectors_and_unknown_layouts_stay_on_adamw():
  dims = optim.muon_dimension_numbers
  assert dims(('MlpBlock_3', 'Dense_0', 'kernel'), (16, 8)) is not None
  # A (width, 1) kernel, e.g. a pooling score per token, is a vector.
  assert dims(('pool', 'score', 'kernel'), (16, 1)) is None
  # 3-D kernels other than the attention's: no known matrix layout.
  assert dims(('query', 'kernel'), (16, 2, 8)) is not None
  assert dims(('other', 'kernel'), (16, 2, 8)) is None
  # The dimension numbers say which axes make the matrix.
  assert dims(('out', 'kernel'), (2, 8, 16)) == optim.MuonDimensionNumbers(
      reduction_axis=(0, 1), output_axis=(2,))


def muon_config(**overrides):
  config = common.get_config()
  config.update(optimizer='muon', grad_norm_clip=0.0, weight_decay=0.0,
                optim_dtype='float32')
  config.update(overrides)
  return config


def matrix_with_spectrum(rows, cols, seed):
  """A random (rows, cols) matrix with singular values from 1 to 1/20, and
  its polar factor U V^T."""
  rng = np.random.RandomState(seed)
  u, _ = np.linalg.qr(rng.randn(rows, min(rows, cols)))
  v, _ = np.linalg.qr(rng.randn(cols, min(rows, cols)))
  spectrum = np.geomspace(1.0, 0.05, min(rows, cols))
  return (u * spectrum) @ v.T, u @ v.T


# Params named as in the models: (their shape, the (rows, columns) of the
# matrix Muon makes of them).
TOY_MATRICES = {
    ('MlpBlock_3', 'Dense_0'): ((24, 40), (24, 40)),
    ('attention', 'query'): ((16, 2, 8), (16, 16)),
    ('attention', 'out'): ((4, 8, 24), (32, 24)),
    ('unit1', 'conv2'): ((3, 3, 8, 16), (72, 16)),
}


def test_one_step_orthogonalises_each_matrix_at_adamw_rms():
  lr, rms = 1e-2, 0.2
  params, grads, polar = {}, {}, {}
  for seed, ((block, layer), (shape, matrix)) in enumerate(
      TOY_MATRICES.items()):
    grad, polar[block, layer] = matrix_with_spectrum(*matrix, seed)
    params.setdefault(block, {})[layer] = {'kernel': jnp.zeros(shape)}
    grads.setdefault(block, {})[layer] = {
        'kernel': jnp.asarray(grad.reshape(shape), jnp.float32)}
  tx = optim.create_optimizer(muon_config(muon={'consistent_rms': rms}), lr)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  for (block, layer), (_, matrix) in TOY_MATRICES.items():
    update = np.asarray(updates[block][layer]['kernel']).reshape(matrix)
    # The update's RMS is about AdamW's (rms per unit learning rate).
    np.testing.assert_allclose(np.sqrt(np.mean(update ** 2)), lr * rms,
                               rtol=0.25, err_msg=layer)
    update = update / (-lr * rms * np.sqrt(max(matrix)))
    # The gradient's singular values span 20x; the update's are all about
    # 1 (Muon's Newton-Schulz coefficients stop short of exactly 1), in the
    # direction of U V^T.
    singular_values = np.linalg.svd(update, compute_uv=False)
    assert 0.6 < singular_values.min() and singular_values.max() < 1.3, (
        layer, singular_values)
    cosine = np.sum(update * polar[block, layer]) / (
        np.linalg.norm(update) * np.linalg.norm(polar[block, layer]))
    assert cosine > 0.97, (layer, cosine)


def test_adamw_half_is_adamw_and_weight_decay_as_adamw():
  _, model_config, image_size, _ = LABEL_CASES['vit_gap_locality']
  model = presets.create_model('vit', model_config, 10)
  rng = np.random.RandomState(0)
  params, grads = (jax.tree.map(
      lambda x: jnp.asarray(rng.randn(*x.shape), jnp.float32),
      presets.abstract_params(model, image_size)) for _ in range(2))
  labels = optim.muon_labels(params)
  config = muon_config(weight_decay=0.1, grad_norm_clip=1.0)
  muon = optim.create_optimizer(config, 1e-2)
  config.optimizer = 'adamw'
  adamw = optim.create_optimizer(config, 1e-2)
  muon_update, adamw_update = jax.jit(muon.update), jax.jit(adamw.update)
  for step_grads in (grads, jax.tree.map(jnp.zeros_like, grads)):
    muon_updates, _ = muon_update(step_grads, muon.init(params), params)
    adamw_updates, _ = adamw_update(step_grads, adamw.init(params), params)
    jax.tree.map(lambda label, a, b: label == 'muon' or
                 np.testing.assert_array_equal(a, b),
                 labels, muon_updates, adamw_updates)
  # With zero gradients, only the decay is left: on every kernel (Muon's
  # too), on no bias, norm or position embedding.
  jax.tree_util.tree_map_with_path(
      lambda path, update, param: np.testing.assert_allclose(
          update, -1e-2 * 0.1 * param * (path[-1].key == 'kernel'),
          rtol=1e-5, atol=1e-9, err_msg=str(path)),
      muon_updates, params)


def test_muon_state_is_sharded_like_the_params():
  model = presets.create_model('vit', tiny_model_config(
      num_layers=1, hidden_size=64), 10)
  params = presets.abstract_params(model, 16)
  tx = optim.create_optimizer(muon_config(), 1e-2)
  opt_state = jax.eval_shape(tx.init, params)
  mesh = jax.sharding.AbstractMesh((1, 4), (mesh_lib.DATA_AXIS,
                                            mesh_lib.FSDP_AXIS))

  def by_path(tree):
    shardings = mesh_lib.state_sharding(tree, mesh)
    return {tuple(getattr(k, 'key', None) for k in path): (np.shape(x), s)
            for (path, x), s in zip(
                jax.tree_util.tree_flatten_with_path(tree)[0],
                jax.tree.leaves(shardings))}

  params_by_path = by_path(params)
  split = 0
  for path, (shape, sharding) in by_path(opt_state).items():
    param = next((params_by_path[path[-n:]] for n in range(len(path), 0, -1)
                  if path[-n:] in params_by_path), None)
    if param is None:
      assert shape in [(), (3,)]  # Step counts, Newton-Schulz coefficients.
      continue
    assert (shape, sharding) == param, path
    split += sharding.spec != jax.sharding.PartitionSpec()
  # The Muon momentum of the (64, 128) MLP kernels, and AdamW's of the
  # (1, 17, 64) position embedding, at least: big enough to be split.
  assert split >= 4


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  directory = tmp_path_factory.mktemp('fashion_mnist')
  write_fashion_mnist(str(directory), num_train=64, num_test=24)
  return str(directory)


@pytest.mark.slow
def test_muon_resumes_bit_for_bit(tmp_path, data, monkeypatch):
  def config():
    return small_fashion_mnist_config(
        data, optimizer='muon', weight_decay=0.05, total_steps=6,
        eval_every=3, checkpoint_every=3)

  whole = loop.train_and_evaluate(config(), str(tmp_path / 'whole'))
  monkeypatch.setattr(preemption.PreemptionHandler, 'should_stop',
                      lambda handler, step: step == 2)
  stopped = loop.train_and_evaluate(config(), str(tmp_path / 'resumed'))
  assert int(stopped.step) == 2
  monkeypatch.undo()
  resumed = loop.train_and_evaluate(config(), str(tmp_path / 'resumed'))
  assert int(resumed.step) == 6
  for name in ('params', 'opt_state'):
    for a, b in zip(jax.tree.leaves(getattr(whole, name)),
                    jax.tree.leaves(getattr(resumed, name))):
      np.testing.assert_array_equal(a, b, err_msg=name)


def test_resume_may_not_move_conv_kernels_between_the_halves():
  config = muon_config()
  saved = checkpointing._json_ready(config)  # pylint: disable=protected-access
  config.muon.update(beta=0.9, ns_steps=3)
  checkpointing.check_resumable(saved, config)  # No error: same state.
  config.muon.conv_kernels = False
  with pytest.raises(errors.CheckpointError, match='muon.conv_kernels'):
    checkpointing.check_resumable(saved, config)


BAD_MUON_CONFIGS = [
    ({'muon': {'beta': 1.0}}, r'config.muon.beta=1.0 .* \[0, 1\)'),
    ({'muon': {'beta': -0.1}}, r'config.muon.beta=-0.1 .* \[0, 1\)'),
    ({'muon': {'ns_steps': 0}}, r'config.muon.ns_steps=0 .* integer >= 1'),
    ({'muon': {'ns_steps': 2.5}}, r'config.muon.ns_steps=2.5 .* integer'),
    ({'muon': {'consistent_rms': 0.0}},
     r'config.muon.consistent_rms=0.0 .* > 0'),
    ({'muon': {'nesterov': 'yes'}}, r"config.muon.nesterov='yes' .* True"),
    ({'muon': {'conv_kernels': 1}}, r'config.muon.conv_kernels=1 .* True'),
    ({'momentum': 0.8}, r"config.momentum=0.8 is SGD's .* config.muon.beta"),
    ({'optimizer': 'adamw', 'muon': {'beta': 0.9}},
     r"config.muon.beta=0.9 is set but config.optimizer='adamw'"),
]


@pytest.mark.parametrize('overrides,message', BAD_MUON_CONFIGS)
def test_bad_muon_configs_are_one_clear_error(overrides, message):
  config = muon_config()
  config.model = tiny_model_config()
  # A new ConfigDict: the defaults' would refuse values of other types.
  config.muon = ml_collections.ConfigDict(
      {**config.muon.to_dict(), **overrides.pop('muon', {})})
  config.update(overrides)
  with pytest.raises(errors.ConfigError, match=message):
    config_checks.check_config(config, num_devices=1)


def test_unknown_muon_field_is_a_clear_error():
  config = muon_config()
  config.model = tiny_model_config()
  config.muon.bets = 0.9
  with pytest.raises(errors.ConfigError, match="config.muon.bets is not a "
                     r"Muon field; the fields are \['beta'"):
    config_checks.check_config(config, num_devices=1)


def test_the_defaults_and_other_optimizers_pass_the_checks():
  for optimizer in optim.OPTIMIZERS:
    config = muon_config(optimizer=optimizer)
    config.model = tiny_model_config()
    config_checks.check_config(config, num_devices=1)


def test_bad_muon_config_stops_the_run_before_the_workdir(tmp_path, data):
  config = small_fashion_mnist_config(data, optimizer='muon')
  config.muon.ns_steps = 0
  with pytest.raises(errors.ConfigError, match='ns_steps'):
    loop.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()
