"""Training and evaluation loop: `train_and_evaluate(config, workdir)`.

One `jax.jit` train step over a mesh of every device: the batch is sharded
along the 'data' axis, params and optimizer state are replicated. With
`config.mesh_fsdp` > 1 the mesh gets a second axis, 'fsdp', the batch is
sharded over both axes, and every large param and optimizer-state tensor is
split over 'fsdp' (fully sharded data parallelism: XLA gathers the params for
each step and reduce-scatters the gradients). The param tree and checkpoints
are the same either way. The host never waits on the device between steps;
metrics are fetched every `progress_every` steps.
"""

import collections
import dataclasses
import functools
import itertools
import time
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

from absl import logging
from clu import periodic_actions
from etils import epath
import flax
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vit_flax import checkpoint
from vit_flax import config_checks
from vit_flax import distill
from vit_flax import train_checkpoints
from vit_flax import errors
from vit_flax import host
from vit_flax import input_pipeline
from vit_flax import metrics
from vit_flax import mixup
from vit_flax import model_configs
from vit_flax import model_stats
from vit_flax import optim
from vit_flax import visualize
from vit_flax import workdir as workdir_lib

DATA_AXIS = 'data'
FSDP_AXIS = 'fsdp'
# Smaller tensors stay replicated under FSDP: gathering them would cost more
# (latency) than the memory it saves.
FSDP_MIN_SIZE = 2**12


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


def create_mesh(devices=None, fsdp: int = 1) -> Mesh:
  """A mesh over every device of every process.

  1-D along DATA_AXIS when `fsdp` is 1; otherwise (devices / fsdp, fsdp)
  along (DATA_AXIS, FSDP_AXIS). Consecutive devices (those of one process,
  on one host) share an FSDP group, so its gathers stay on the fast local
  links when `fsdp` <= the local device count.
  """
  devices = np.asarray(jax.devices() if devices is None else devices)
  if fsdp == 1:
    return Mesh(devices, (DATA_AXIS,))
  if fsdp < 1 or devices.size % fsdp:
    raise errors.ConfigError(
        f'mesh_fsdp={fsdp} must be >= 1 and divide the device count '
        f'({devices.size}).')
  return Mesh(devices.reshape(-1, fsdp), (DATA_AXIS, FSDP_AXIS))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches: the leading axis split over every device of the mesh."""
  axes = mesh.axis_names
  return NamedSharding(mesh, P(axes if len(axes) > 1 else axes[0]))


def state_sharding(tree, mesh: Mesh):
  """Shardings of a train state (or any tree of arrays) on `mesh`.

  Replicated without an FSDP axis. With one, each tensor of at least
  FSDP_MIN_SIZE elements is split along its largest dimension that the FSDP
  axis divides; the optimizer moments, shaped like their params, are split
  like them.
  """
  replicated = NamedSharding(mesh, P())
  if FSDP_AXIS not in mesh.axis_names:
    return jax.tree.map(lambda _: replicated, tree)
  fsdp = mesh.shape[FSDP_AXIS]

  def sharding(x):
    shape = np.shape(x)
    if np.prod(shape, dtype=np.int64) < FSDP_MIN_SIZE:
      return replicated
    divisible = [d for d in range(len(shape)) if shape[d] % fsdp == 0]
    if not divisible:
      return replicated
    dim = max(divisible, key=lambda d: (shape[d], d))
    spec = [None] * len(shape)
    spec[dim] = FSDP_AXIS
    return NamedSharding(mesh, P(*spec))

  return jax.tree.map(sharding, tree)


def split_across_processes(tree) -> bool:
  """Whether no single process holds all of some array of `tree`."""
  return not all(x.is_fully_replicated or x.is_fully_addressable
                 for x in jax.tree.leaves(tree))


def fetch_params(params):
  """The params as numpy arrays on this host.

  Params split across processes (FSDP) are gathered first, which every
  process must take part in.
  """
  if split_across_processes(params):
    return multihost_utils.process_allgather(params, tiled=True)
  return jax.device_get(params)


def validate_config(config: ml_collections.ConfigDict, num_devices: int):
  """Fails fast, before any work, on values that cannot work."""
  config_checks.check_config(config, num_devices)


def check_image_sizes(model, sizes, num_channels: int = 3):
  """Traces the model at each size (no compute) to catch shape errors now."""
  for size in sorted(set(sizes)):
    model_configs.abstract_params(model, size, num_channels)


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

  Replicated, or split as `state_sharding` says when the mesh has an FSDP
  axis: each device only ever holds its part. `teacher_params` (a frozen
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
  if FSDP_AXIS in mesh.axis_names:
    shardings = state_sharding(
        jax.eval_shape(init, init_params, teacher_params), mesh)
  return jax.jit(init, out_shardings=shardings)(init_params, teacher_params)


def make_train_step(model, tx, schedule, config, num_classes, mesh: Mesh,
                    state_shardings=None, teacher_model=None):
  """The jitted step: (state, batch) -> (state, metrics); state donated.

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
    if FSDP_AXIS in mesh.axis_names:
      raise ValueError('A mesh with an FSDP axis needs state_shardings.')
    state_shardings = replicated
  micro_sharding = NamedSharding(mesh,
                                 P(None, *batch_sharding(mesh).spec))

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
               'grad_norm': optax.global_norm(grads),
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
  """Jitted: (params, batch) -> sums of loss, correct and mask."""
  replicated = NamedSharding(mesh, P())

  def eval_step(params, batch):
    logits = model.apply({'params': params}, batch['image'], train=False)
    mask = batch['mask']
    loss = cross_entropy(logits, batch['label'], num_classes)
    correct = jnp.argmax(logits, -1) == batch['label']
    return {'loss': jnp.sum(loss * mask), 'correct': jnp.sum(correct * mask),
            'count': jnp.sum(mask)}

  return jax.jit(eval_step, out_shardings=replicated)


def to_global(batch: Dict[str, np.ndarray], sharding) -> Dict[str, jax.Array]:
  """This process's part of a batch -> one array sharded over all devices."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def prefetch_to_mesh(batches: Iterator[Dict[str, np.ndarray]], size: int,
                     sharding) -> Iterator[Dict[str, jax.Array]]:
  """Keeps `size` batches in flight to the devices (transfers are async)."""
  queue = collections.deque()

  def enqueue(n):
    for batch in itertools.islice(batches, n):
      queue.append(to_global(batch, sharding))

  enqueue(max(size, 1))
  while queue:
    yield queue.popleft()
    enqueue(1)


def evaluate(eval_step, params, pipeline, sharding) -> Dict[str, float]:
  """Loss and accuracy over the whole eval split, each example once."""
  totals = None
  for batch in prefetch_to_mesh(pipeline.eval_batches(), 2, sharding):
    sums = eval_step(params, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals['count'])
  return {'eval_loss': float(totals['loss']) / count,
          'eval_accuracy': float(totals['correct']) / count,
          'eval_count': int(count)}


def hparams_of(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The config flattened to scalars, for TensorBoard's hparams tab."""
  flat = flax.traverse_util.flatten_dict(config.to_dict(), sep='.')
  return {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
          for k, v in flat.items()}


def format_duration(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{seconds:02d}s'


# Figures at each evaluation: the loop calls a hook with the host params and
# writes the images it returns; what they show is the hook's business.
FigureHook = Callable[[Any], Mapping[str, np.ndarray]]


def default_figure_hook(model, config: ml_collections.ConfigDict,
                        pipeline: input_pipeline.Pipeline
                        ) -> Optional[FigureHook]:
  """`visualize.summary_images` of the first eval image, or None when
  `config.eval_figures` is off or this process does not write metrics."""
  if not config.get('eval_figures') or jax.process_index() > 0:
    return None
  images = next(pipeline.eval_batches())['image'][:1]
  return functools.partial(visualize.summary_images, model, images=images,
                           model_config=config.model)


@dataclasses.dataclass
class Setup:
  """What a training run is made of, built once before its first step."""

  config: ml_collections.ConfigDict
  workdir: epath.Path
  mesh: Mesh
  pipeline: input_pipeline.Pipeline
  model: Any
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  checkpointer: Optional[train_checkpoints.Checkpointer]
  lock: workdir_lib.WorkdirLock
  teacher: Optional[distill.Teacher] = None

  def close(self):
    """Waits for pending saves (raising their errors), then unlocks."""
    try:
      if self.checkpointer:
        try:
          self.checkpointer.wait()
        finally:
          self.checkpointer.close()
    finally:
      self.lock.release()

  @property
  def num_classes(self) -> int:
    return self.pipeline.num_classes


def set_up(config: ml_collections.ConfigDict, workdir: str) -> Setup:
  """Checks the config, then builds the mesh, data, model and optimizer.

  Every check that needs no device work runs before the workdir is touched.
  """
  num_devices = jax.device_count()
  validate_config(config, num_devices)
  pipeline = input_pipeline.Pipeline(config, jax.process_index(),
                                     jax.process_count())
  model = model_configs.create_model_for(config, pipeline.num_classes)
  check_image_sizes(model, [pipeline.image_size] +
                    [phase.image_size for phase in pipeline.phases])
  schedule = optim.create_learning_rate_schedule(
      config.total_steps, config.base_lr, config.decay_type,
      config.warmup_steps)
  tx = optim.create_optimizer(config, schedule)
  teacher = None
  if distill.options_from_config(config) is not None:
    teacher = distill.load_teacher(config, pipeline.num_classes,
                                   pipeline.image_size)
    logging.info('Distilling from the %s (%s).', teacher.source,
                 config.distill.get('type', 'hard'))
  path = workdir_lib.prepare_workdir(workdir)
  # Before the checkpoints are touched (a live job may be saving).
  lock = workdir_lib.WorkdirLock(path)
  checkpointer = None
  try:
    if config.checkpoint_every:
      checkpointer = train_checkpoints.Checkpointer(
          path, keep=config.get('keep_checkpoints', 3))
  except BaseException:
    lock.release()
    raise
  return Setup(config=config, workdir=path,
               mesh=create_mesh(fsdp=config.get('mesh_fsdp', 1)),
               pipeline=pipeline, model=model, schedule=schedule, tx=tx,
               checkpointer=checkpointer, lock=lock, teacher=teacher)


def initial_state(setup: Setup) -> Tuple[TrainState, int, Dict[str, Any]]:
  """The state to start from: the latest checkpoint if there is one, else a
  fresh init (from `config.pretrained_path` when set).

  Returns (state, its step, the data position and pending metrics saved
  with it).
  """
  config, pipeline = setup.config, setup.pipeline
  resuming = setup.checkpointer is not None and (
      setup.checkpointer.latest_step())
  init_params = None
  if config.get('pretrained_path') and not resuming:
    # The fresh params give the target shapes and the new head.
    fresh = jax.jit(functools.partial(setup.model.init, train=False))(
        jax.random.PRNGKey(config.seed),
        jnp.zeros((1, pipeline.image_size, pipeline.image_size, 3)))['params']
    init_params = checkpoint.load_pretrained(
        pretrained_path=config.pretrained_path,
        init_params=jax.device_get(fresh), model_config=config.model)
    logging.info('Fine-tuning from %s.', config.pretrained_path)
  state = create_train_state(
      setup.model, setup.tx, config, pipeline.image_size, setup.mesh,
      init_params, setup.teacher.params if setup.teacher else None)
  if not resuming:
    return state, 0, {}
  return setup.checkpointer.restore(state, config)


class DivergenceError(errors.UserError):
  """The loss or gradient norm became NaN or infinite."""


class ProgressWindow:
  """Train metrics and throughput between two progress reports.

  Calls of the train step that compiled it (the first, and the first at
  each new image size) are left out of the time, so img/s and the ETA are
  those of training, not of XLA.
  """

  def __init__(self, first_step: int, pending=()):
    # Some metrics may be from before a preemption: steps first_step, ...
    self.first_step = first_step - len(pending)
    self.metrics = list(pending)
    self.steps = 0
    self.seconds = 0.0
    self.started = None

  def start(self):
    self.started = time.time()

  def add(self, step_metrics, compile_seconds: float = 0.0):
    self.metrics.append(step_metrics)
    self.steps += 1
    self.seconds -= compile_seconds

  def pause(self, seconds: float):
    """Time spent on other work (evaluations, figures) in this window."""
    self.seconds -= seconds

  def check_finite(self, last_good_step: Optional[int]):
    """Raises DivergenceError at the first step whose loss or gradient norm
    is not finite, so that such a state is never saved."""
    for offset, step_metrics in enumerate(jax.device_get(self.metrics)):
      values = {k: float(step_metrics[k]) for k in ('loss', 'grad_norm')}
      if all(np.isfinite(v) for v in values.values()):
        continue
      kept = ('no checkpoint was saved yet' if last_good_step is None else
              f'the checkpoint of step {last_good_step} is kept as the '
              'newest')
      raise DivergenceError(
          f'Training diverged at step {self.first_step + offset}: loss '
          f'{values["loss"]}, gradient norm {values["grad_norm"]}. Nothing '
          f'of this state is saved; {kept}. To go on from there, run the same '
          'command again with a lower learning rate (e.g. '
          '--config.base_lr=<half of it>), a longer warm-up '
          '(--config.warmup_steps) or gradient clipping '
          '(--config.grad_norm_clip=1).')

  def summary(self) -> Dict[str, float]:
    """The mean of each metric over the window (fetched from the devices)."""
    fetched = jax.device_get(self.metrics)
    # float32 whether restored (JSON) or fresh, for equal averages.
    return {k: float(np.mean(np.asarray([m[k] for m in fetched], np.float32)))
            for k in fetched[0]}

  def train_seconds(self) -> float:
    return max(self.seconds + time.time() - self.started, 1e-9)


def compiled_during(jitted, call):
  """(call(), seconds) if the call compiled `jitted`, else (call(), 0)."""
  # pylint: disable=protected-access
  cache_size = jitted._cache_size()
  start = time.time()
  out = call()
  compiled = jitted._cache_size() > cache_size
  return out, (time.time() - start if compiled else 0.0)


def report_progress(setup: Setup, writer, window: ProgressWindow, step: int):
  """Writes the window's mean train metrics and logs one progress line."""
  config, num_devices = setup.config, jax.device_count()
  summary = window.summary()
  seconds = window.train_seconds()
  summary['img_per_sec_per_device'] = (
      window.steps * config.batch / seconds / num_devices)
  summary['image_size'] = setup.pipeline.image_size_at(step - 1)
  writer.write_scalars(step, summary)
  eta = (config.total_steps - step) * seconds / window.steps
  logging.info(
      'step %d/%d: loss %.4f, accuracy %.3f, lr %.2e, %.0f img/s, ETA %s',
      step, config.total_steps, summary['loss'], summary['accuracy'],
      summary['learning_rate'],
      summary['img_per_sec_per_device'] * num_devices, format_duration(eta))


def evaluate_and_keep_best(setup: Setup, writer, eval_step, state, step,
                           figure_hook: Optional[FigureHook]):
  """Evaluates the params (and their EMA) on the test split, keeps the best
  checkpoint (of the EMA when there is one), and writes the hook's figures."""
  data_sharding = batch_sharding(setup.mesh)
  results = evaluate(eval_step, state.params, setup.pipeline, data_sharding)
  logging.info('eval at step %d: loss %.4f, accuracy %.4f over %d examples',
               step, results['eval_loss'], results['eval_accuracy'],
               results['eval_count'])
  best_params, best_accuracy = state.params, results['eval_accuracy']
  if state.ema_params is not None:
    ema = evaluate(eval_step, state.ema_params, setup.pipeline, data_sharding)
    results.update(eval_ema_loss=ema['eval_loss'],
                   eval_ema_accuracy=ema['eval_accuracy'])
    logging.info('eval of the EMA at step %d: loss %.4f, accuracy %.4f',
                 step, ema['eval_loss'], ema['eval_accuracy'])
    best_params, best_accuracy = state.ema_params, ema['eval_accuracy']
  writer.write_scalars(step, results)
  if setup.checkpointer:
    setup.checkpointer.save_if_best(step, best_params, setup.config,
                                    best_accuracy,
                                    ema=state.ema_params is not None)
  # Params split across processes are gathered with every process's help,
  # whichever of them draws the figures.
  gather = setup.config.get('eval_figures') and split_across_processes(
      state.params)
  if figure_hook is not None or gather:
    host_params = fetch_params(state.params)
    if figure_hook is not None:
      writer.write_images(step, {f'figures/{name}': image[None]
                                 for name, image in figure_hook(
                                     host_params).items()})


def save_due(setup: Setup, step: int, stop: bool, last_save: float) -> bool:
  config = setup.config
  return setup.checkpointer is not None and (
      stop or step % config.checkpoint_every == 0 or
      step == config.total_steps or train_checkpoints.should_save_by_time(
          step, last_save, config.get('checkpoint_every_minutes', 0)))


def train_loop(setup: Setup, state: TrainState, start_step: int,
               resumed_data: Dict[str, Any], writer,
               figure_hook: Optional[FigureHook]) -> TrainState:
  """Steps from `start_step` to `config.total_steps`, with progress reports,
  evaluations and checkpoints, until done or asked to stop (SIGTERM)."""
  config = setup.config
  train_step = make_train_step(
      setup.model, setup.tx, setup.schedule, config, setup.num_classes,
      setup.mesh, state_shardings=jax.tree.map(lambda x: x.sharding, state),
      teacher_model=setup.teacher.model if setup.teacher else None)
  eval_step = make_eval_step(setup.model, setup.num_classes, setup.mesh)
  profile = None
  if config.get('profile') and jax.process_index() == 0:
    profile = periodic_actions.Profile(logdir=setup.workdir,
                                       num_profile_steps=5)
  preemption = train_checkpoints.PreemptionHandler()
  batches = prefetch_to_mesh(setup.pipeline.train_batches(start_step),
                             config.prefetch, batch_sharding(setup.mesh))
  window = ProgressWindow(start_step + 1,
                          resumed_data.get('pending_metrics', []))
  window.start()
  last_save = time.time()
  checkpointer = setup.checkpointer

  def last_good_step():
    return checkpointer.latest_step() if checkpointer else None

  try:
    for step in range(start_step + 1, config.total_steps + 1):
      batch = next(batches)
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        (state, step_metrics), compile_seconds = compiled_during(
            train_step, functools.partial(train_step, state, batch))
      window.add(step_metrics, compile_seconds)
      if profile:
        profile(step)

      if step % config.progress_every == 0 or step == config.total_steps:
        window.check_finite(last_good_step())
        report_progress(setup, writer, window, step)
        window = ProgressWindow(step + 1)
        window.start()

      if step % config.eval_every == 0 or step == config.total_steps:
        window.check_finite(last_good_step())  # Before a best/ save.
        eval_start = time.time()
        evaluate_and_keep_best(setup, writer, eval_step, state, step,
                               figure_hook)
        window.pause(time.time() - eval_start)  # Not train time.

      stop = preemption.should_stop(step)
      if save_due(setup, step, stop, last_save):
        window.check_finite(last_good_step())
        checkpointer.save(step, state, config, step * config.batch,
                          jax.device_get(window.metrics))
        last_save = time.time()
      if stop:
        logging.warning('Stopping at step %d on request; resume by running '
                        'the same command again.', step)
        break
  finally:
    preemption.restore_handlers()
  return state


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> TrainState:
  """Trains and evaluates, resuming from `workdir` if it has a checkpoint.

  Returns the final train state (or the state where a preemption stopped).
  """
  setup = set_up(config, workdir)
  try:
    state, start_step, resumed_data = initial_state(setup)
    logging.info('Model %s: %.2fM parameters; %d classes; %d devices.',
                 config.model.get('model_name'),
                 model_stats.count_params(state.params) / 1e6,
                 setup.num_classes, jax.device_count())
    host.log_cpu_allocator_hint()
    writer = metrics.ResumableWriter(setup.workdir,
                                     just_logging=jax.process_index() > 0)
    try:
      writer.write_hparams(hparams_of(config))
      if start_step >= config.total_steps:
        logging.info('Nothing to do: the checkpoint is at step %d and '
                     'total_steps=%d.', start_step, config.total_steps)
      figure_hook = default_figure_hook(setup.model, config, setup.pipeline)
      state = train_loop(setup, state, start_step, resumed_data, writer,
                         figure_hook)
    finally:
      writer.flush()
  finally:
    setup.close()  # Surfaces errors of asynchronous saves.
  return state
