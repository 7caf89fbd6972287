"""The train state and the jitted train and evaluation steps."""

from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import optax

from vit_flax.data import device as device_data
from vit_flax.data import mixup
from vit_flax.training import distill
from vit_flax.training import mesh as mesh_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # Raw uint32 key; dropout keys are folded in from it.
  # The exponential moving average of `params` (None without config.ema_decay).
  ema_params: Any = None
  # A frozen teacher's params (config.distill): placed like the params, never
  # updated, not checkpointed (read from the teacher's files at each start).
  teacher_params: Any = None


def cross_entropy(logits, labels, num_classes, label_smoothing=0.0):
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


# Folded into a step's key for the mixing draws, apart from dropout's keys.
MIX_RNG_KEY = 0x6D6978


def ema_decay_at(updates, decay: float, warmup_power: float):
  """The EMA decay after `updates` optimizer updates, as timm's ModelEmaV3:
  0 for the first (the average starts as the params), then, with a warm-up,
  min(decay, 1 - (1 + (updates - 1))^-warmup_power)."""
  seen = jnp.maximum(updates - 1, 0).astype(jnp.float32)
  value = jnp.asarray(decay, jnp.float32)
  if warmup_power:
    value = jnp.minimum(value, 1 - (1 + seen)**-warmup_power)
  return jnp.where(seen > 0, value, 0.0)


def update_ema(ema_params, params, decay):
  """ema * decay + params * (1 - decay), leaf by leaf."""
  return jax.tree.map(lambda e, p: e * decay + p * (1 - decay), ema_params,
                      params)


def create_train_state(model, tx, config, image_size: int, mesh: Mesh,
                       init_params=None, teacher_params=None) -> TrainState:
  """Initialises (or places `init_params`) on the mesh.

  Replicated, or split as `mesh.state_sharding` says when the mesh has an
  FSDP axis: each device only ever holds its part. `teacher_params` (a frozen
  teacher's) are placed the same way.
  """
  rng = jax.random.PRNGKey(config.seed)
  init_rng, dropout_rng = jax.random.split(rng)

  def init(params, teacher_params):
    if params is None:
      params = model.init(init_rng, jnp.zeros((1, image_size, image_size, 3)),
                          train=False)['params']
    ema_params = params if config.get('ema_decay') else None
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), rng=dropout_rng,
                      ema_params=ema_params, teacher_params=teacher_params)

  shardings = NamedSharding(mesh, P())  # Replicated: no shapes needed.
  if mesh_lib.FSDP_AXIS in mesh.axis_names:
    shardings = mesh_lib.state_sharding(
        jax.eval_shape(init, init_params, teacher_params), mesh)
  return jax.jit(init, out_shardings=shardings)(init_params, teacher_params)


def make_train_step(model, tx, schedule, config, num_classes, mesh: Mesh,
                    state_shardings=None, teacher_model=None):
  """The jitted step: (state, batch) -> (state, metrics); state donated.

  `batch` is {'image', 'label'} or, with `config.data_on_device`, a
  `device.TrainData` that the step draws the batch of `state.step` from.

  Mixup/CutMix (`config.mixup`, `config.cutmix`) mix the batch on the
  devices, keyed by the step; the loss then takes soft targets and the train
  accuracy counts a prediction of either source label by its weight in the
  target (`mixup.mixed_accuracy`). With `config.ema_decay` the step also
  updates the EMA of the params. With `teacher_model` (`config.distill`),
  its logits on the same images (of `state.teacher_params`) teach the
  student's distillation head (`distill`).

  `state_shardings` (the state's, e.g. `jax.tree.map(lambda x: x.sharding,
  state)`) keeps the new state laid out as the old one; None means
  replicated, which is only valid on a mesh without an FSDP axis.
  """
  accum_steps = config.get('accum_steps', 1)
  label_smoothing = config.get('label_smoothing', 0.0)
  mix = mixup.options_from_config(config)
  ema_decay = config.get('ema_decay', 0.0)
  ema_warmup_power = config.get('ema_warmup_power', 0.0)
  distill_options = (distill.options_from_config(config)
                     if teacher_model is not None else None)
  two_heads = distill_options is not None and (
      (config.get('model') or {}).get('classifier') == 'token_distill')
  replicated = NamedSharding(mesh, P())
  if state_shardings is None:
    if mesh_lib.FSDP_AXIS in mesh.axis_names:
      raise ValueError('A mesh with an FSDP axis needs state_shardings.')
    state_shardings = replicated
  micro_sharding = NamedSharding(mesh,
                                 P(None, *mesh_lib.batch_sharding(mesh).spec))

  def loss_fn(params, inputs, rng):
    """(loss, {'accuracy', ...}) of a (micro)batch of `inputs` (see
    `step_inputs`)."""
    outputs = model.apply({'params': params}, inputs['image'], train=True,
                          rngs={'dropout': rng},
                          **({'distill_outputs': True} if two_heads else {}))
    # The class head's logits, and what the model predicts.
    logits, predicted = outputs, outputs
    if two_heads:
      logits, distill_logits = outputs
      predicted = (logits + distill_logits) / 2
    if 'mixed' not in inputs:
      labels = inputs['label']
      loss = cross_entropy(logits, labels, num_classes, label_smoothing)
      aux = {'accuracy': jnp.mean(jnp.argmax(predicted, -1) == labels)}
    else:
      mixed = inputs['mixed']
      loss = mixup.soft_cross_entropy(logits, mixed.targets)
      aux = {'accuracy': mixup.mixed_accuracy(predicted, mixed)}
    loss = loss.mean()
    if distill_options is not None:
      kd = distill.distillation_loss(
          distill_logits if two_heads else logits, inputs['teacher_logits'],
          distill_options).mean()
      aux['distill_loss'] = kd
      loss = (1 - distill_options.alpha) * loss + distill_options.alpha * kd
    return loss, aux

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step_inputs(state, batch, rng):
    """What the loss needs of each example: the (mixed) images, the labels
    (or mixed targets) and the teacher's logits on those images."""
    if not mix.enabled:
      inputs = {'image': batch['image'], 'label': batch['label']}
    else:
      mixed = mixup.mix_batch(jax.random.fold_in(rng, MIX_RNG_KEY),
                              batch['image'], batch['label'], num_classes,
                              mix)
      # The images once: mixed.images would be split into microbatches too.
      inputs = {'image': mixed.images, 'mixed': mixed.replace(images=None)}
    if teacher_model is not None:
      inputs['teacher_logits'] = jax.lax.stop_gradient(teacher_model.apply(
          {'params': state.teacher_params}, inputs['image'], train=False))
    return inputs

  def microbatches(x):
    # Microbatch i takes rows i, i + A, i + 2A, ...: each device's rows stay
    # on that device, so splitting the batch moves no data.
    x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:])
    return jax.lax.with_sharding_constraint(jnp.swapaxes(x, 0, 1),
                                            micro_sharding)

  def compute_grads(params, inputs, rng):
    """(loss, aux, grads), averaged over `accum_steps` microbatches."""
    if accum_steps == 1:
      (loss, aux), grads = grad_fn(params, inputs, rng)
      return loss, aux, grads

    def accumulate(total, indexed_inputs):
      index, micro_inputs = indexed_inputs
      (loss, aux), grads = grad_fn(params, micro_inputs,
                                   jax.random.fold_in(rng, index))
      return jax.tree.map(jnp.add, total, (loss, aux, grads)), None

    micro = jax.tree.map(microbatches, inputs)
    (loss, aux), grads = jax.eval_shape(
        grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng)
    zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                         (loss, aux, grads))
    total, _ = jax.lax.scan(accumulate, zeros,
                            (jnp.arange(accum_steps), micro))
    return jax.tree.map(lambda x: x / accum_steps, total)

  def train_step(state: TrainState, batch):
    if isinstance(batch, device_data.TrainData):  # config.data_on_device
      batch = batch.batch_at(state.step)
    # Runs once per input shape: one compilation per curriculum image size.
    logging.info('Compiling the train step for images of shape %s.',
                 batch['image'].shape)
    # One key per step; under jit it is split over the devices' shards of
    # the batch, so every device (and example) gets its own dropout mask.
    rng = jax.random.fold_in(state.rng, state.step)
    loss, aux, grads = compute_grads(state.params,
                                     step_inputs(state, batch, rng), rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, **aux,
               'grad_norm': optax.tree.norm(grads),
               'learning_rate': schedule(state.step)}
    ema_params = state.ema_params
    if ema_decay:
      decay = ema_decay_at(state.step + 1, ema_decay, ema_warmup_power)
      ema_params = update_ema(ema_params, params, decay)
      metrics['ema_decay'] = decay
    new_state = state.replace(step=state.step + 1, params=params,
                              opt_state=opt_state, ema_params=ema_params)
    return new_state, metrics

  return jax.jit(train_step, out_shardings=(state_shardings, replicated),
                 donate_argnums=0)


def make_eval_step(model, num_classes, mesh: Mesh):
  """Jitted: (params, batch) -> sums of loss, correct and mask; `batch` as
  the host pipeline's eval batches, or a `device.EvalData`."""
  replicated = NamedSharding(mesh, P())

  def eval_step(params, batch):
    if isinstance(batch, device_data.EvalData):  # config.data_on_device
      batch = batch.materialize()
    logits = model.apply({'params': params}, batch['image'], train=False)
    mask = batch['mask']
    loss = cross_entropy(logits, batch['label'], num_classes)
    correct = jnp.argmax(logits, -1) == batch['label']
    return {'loss': jnp.sum(loss * mask), 'correct': jnp.sum(correct * mask),
            'count': jnp.sum(mask)}

  return jax.jit(eval_step, out_shardings=replicated)
