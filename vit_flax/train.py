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
from vit_flax import train_checkpoints
from vit_flax import errors
from vit_flax import host
from vit_flax import input_pipeline
from vit_flax import metrics
from vit_flax import model_configs
from vit_flax import model_stats
from vit_flax import optim
from vit_flax import visualize

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
  for field in ('dataset', 'total_steps', 'batch', 'batch_eval', 'model'):
    if config.get(field) is None:
      raise errors.ConfigError(f'config.{field} must be set.')
  if config.total_steps <= 0:
    raise errors.ConfigError(f'total_steps={config.total_steps} must be > 0.')
  fsdp = config.get('mesh_fsdp', 1)
  if fsdp < 1 or num_devices % fsdp:
    raise errors.ConfigError(
        f'mesh_fsdp={fsdp} must be >= 1 and divide the device count '
        f'({num_devices}); e.g. mesh_fsdp=1 (replicated) or '
        f'{num_devices} (every device holds a part).')
  accum = config.get('accum_steps', 1)
  if accum < 1:
    raise errors.ConfigError(f'accum_steps={accum} must be >= 1.')
  if config.batch % (num_devices * accum):
    raise errors.ConfigError(
        f'batch={config.batch} must be divisible by the device count '
        f'({num_devices}) times accum_steps ({accum}); e.g. use batch='
        f'{max(1, config.batch // (num_devices * accum)) * num_devices * accum}.'
    )
  if config.batch_eval % num_devices:
    raise errors.ConfigError(
        f'batch_eval={config.batch_eval} must be divisible by the device '
        f'count ({num_devices}).')
  if config.get('pretrained_path'):
    if not epath.Path(config.pretrained_path).exists():
      raise errors.ConfigError(
          f'pretrained_path {config.pretrained_path} does not exist; download '
          'an official checkpoint (e.g. gs://vit_models/imagenet21k/'
          'ViT-B_16.npz) or fix the path.')


def prepare_workdir(workdir: str) -> epath.Path:
  """Creates `workdir` and checks it is a writable directory."""
  path = epath.Path(workdir)
  if path.exists() and not path.is_dir():
    raise errors.ConfigError(f'workdir {workdir} is a file; give a directory.')
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f'.write_probe_{jax.process_index()}'
    probe.write_text('ok')
    probe.unlink()
  except OSError as e:
    raise errors.ConfigError(
        f'workdir {workdir} is not writable ({e}); choose a directory you '
        'can write to or fix its permissions.') from e
  return path


def check_image_sizes(model, sizes, num_channels: int = 3):
  """Traces the model at each size (no compute) to catch shape errors now."""
  for size in sorted(set(sizes)):
    model_configs.abstract_params(model, size, num_channels)


def cross_entropy(logits, labels, num_classes, label_smoothing=0.0):
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def create_train_state(model, tx, config, image_size: int, mesh: Mesh,
                       init_params=None) -> TrainState:
  """Initialises (or places `init_params`) on the mesh.

  Replicated, or split as `state_sharding` says when the mesh has an FSDP
  axis: each device only ever holds its part.
  """
  rng = jax.random.PRNGKey(config.seed)
  init_rng, dropout_rng = jax.random.split(rng)

  def init(params):
    if params is None:
      params = model.init(init_rng, jnp.zeros((1, image_size, image_size, 3)),
                          train=False)['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=tx.init(params), rng=dropout_rng)

  shardings = NamedSharding(mesh, P())  # Replicated: no shapes needed.
  if FSDP_AXIS in mesh.axis_names:
    shardings = state_sharding(jax.eval_shape(init, init_params), mesh)
  return jax.jit(init, out_shardings=shardings)(init_params)


def make_train_step(model, tx, schedule, config, num_classes, mesh: Mesh,
                    state_shardings=None):
  """The jitted step: (state, batch) -> (state, metrics); state donated.

  `state_shardings` (the state's, e.g. `jax.tree.map(lambda x: x.sharding,
  state)`) keeps the new state laid out as the old one; None means
  replicated, which is only valid on a mesh without an FSDP axis.
  """
  accum_steps = config.get('accum_steps', 1)
  label_smoothing = config.get('label_smoothing', 0.0)
  replicated = NamedSharding(mesh, P())
  if state_shardings is None:
    if FSDP_AXIS in mesh.axis_names:
      raise ValueError('A mesh with an FSDP axis needs state_shardings.')
    state_shardings = replicated
  micro_sharding = NamedSharding(mesh,
                                 P(None, *batch_sharding(mesh).spec))

  def loss_fn(params, images, labels, rng):
    logits = model.apply({'params': params}, images, train=True,
                         rngs={'dropout': rng})
    loss = cross_entropy(logits, labels, num_classes, label_smoothing).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, accuracy

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def microbatches(x):
    # Microbatch i takes rows i, i + A, i + 2A, ...: each device's rows stay
    # on that device, so splitting the batch moves no data.
    x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:])
    return jax.lax.with_sharding_constraint(jnp.swapaxes(x, 0, 1),
                                            micro_sharding)

  def compute_grads(params, images, labels, rng):
    if accum_steps == 1:
      (loss, accuracy), grads = grad_fn(params, images, labels, rng)
      return loss, accuracy, grads

    def accumulate(total, inputs):
      index, micro_images, micro_labels = inputs
      (loss, accuracy), grads = grad_fn(params, micro_images, micro_labels,
                                        jax.random.fold_in(rng, index))
      return jax.tree.map(jnp.add, total, (loss, accuracy, grads)), None

    zeros = (jnp.zeros(()), jnp.zeros(()),
             jax.tree.map(jnp.zeros_like, params))
    total, _ = jax.lax.scan(
        accumulate, zeros,
        (jnp.arange(accum_steps), microbatches(images), microbatches(labels)))
    return jax.tree.map(lambda x: x / accum_steps, total)

  def train_step(state: TrainState, batch):
    # Runs once per input shape: one compilation per curriculum image size.
    logging.info('Compiling the train step for images of shape %s.',
                 batch['image'].shape)
    # One key per step; under jit it is split over the devices' shards of
    # the batch, so every device (and example) gets its own dropout mask.
    rng = jax.random.fold_in(state.rng, state.step)
    loss, accuracy, grads = compute_grads(state.params, batch['image'],
                                          batch['label'], rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, 'accuracy': accuracy,
               'grad_norm': optax.global_norm(grads),
               'learning_rate': schedule(state.step)}
    new_state = state.replace(step=state.step + 1, params=params,
                              opt_state=opt_state)
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
  workdir = prepare_workdir(workdir)
  checkpointer = None
  if config.checkpoint_every:
    checkpointer = train_checkpoints.Checkpointer(
        workdir, keep=config.get('keep_checkpoints', 3))
  return Setup(config=config, workdir=workdir,
               mesh=create_mesh(fsdp=config.get('mesh_fsdp', 1)),
               pipeline=pipeline, model=model, schedule=schedule, tx=tx,
               checkpointer=checkpointer)


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
  state = create_train_state(setup.model, setup.tx, config,
                             pipeline.image_size, setup.mesh, init_params)
  if not resuming:
    return state, 0, {}
  return setup.checkpointer.restore(state, config)


class ProgressWindow:
  """Train metrics and throughput between two progress reports.

  Calls of the train step that compiled it (the first, and the first at
  each new image size) are left out of the time, so img/s and the ETA are
  those of training, not of XLA.
  """

  def __init__(self, pending=()):
    self.metrics = list(pending)  # Some may be from before a preemption.
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
  """Evaluates the params on the test split, keeps the best checkpoint, and
  writes the figures of the hook."""
  data_sharding = batch_sharding(setup.mesh)
  results = evaluate(eval_step, state.params, setup.pipeline, data_sharding)
  writer.write_scalars(step, results)
  logging.info('eval at step %d: loss %.4f, accuracy %.4f over %d examples',
               step, results['eval_loss'], results['eval_accuracy'],
               results['eval_count'])
  if setup.checkpointer:
    setup.checkpointer.save_if_best(step, state.params, setup.config,
                                    results['eval_accuracy'])
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
      setup.mesh, state_shardings=jax.tree.map(lambda x: x.sharding, state))
  eval_step = make_eval_step(setup.model, setup.num_classes, setup.mesh)
  profile = None
  if config.get('profile') and jax.process_index() == 0:
    profile = periodic_actions.Profile(logdir=setup.workdir,
                                       num_profile_steps=5)
  preemption = train_checkpoints.PreemptionHandler()
  batches = prefetch_to_mesh(setup.pipeline.train_batches(start_step),
                             config.prefetch, batch_sharding(setup.mesh))
  window = ProgressWindow(resumed_data.get('pending_metrics', []))
  window.start()
  last_save = time.time()
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
        report_progress(setup, writer, window, step)
        window = ProgressWindow()
        window.start()

      if step % config.eval_every == 0 or step == config.total_steps:
        eval_start = time.time()
        evaluate_and_keep_best(setup, writer, eval_step, state, step,
                               figure_hook)
        window.pause(time.time() - eval_start)  # Not train time.

      stop = preemption.should_stop(step)
      if save_due(setup, step, stop, last_save):
        setup.checkpointer.save(step, state, config, step * config.batch,
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
    if setup.checkpointer:
      try:
        setup.checkpointer.wait()  # Surfaces errors of asynchronous saves.
      finally:
        setup.checkpointer.close()
  return state
