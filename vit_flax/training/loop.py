"""Training and evaluation loop: `train_and_evaluate(config, workdir)`.

The jitted step (`step`) runs over a mesh of every device (`mesh`). The
host never waits on the device between steps; metrics are fetched every
`progress_every` steps, evaluations and checkpoints run at their intervals,
and SIGTERM stops the loop at a step boundary with a checkpoint.
"""

import dataclasses
import functools
import time
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from absl import logging
from etils import epath
import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import ml_collections
import numpy as np
import optax

from vit_flax import errors
from vit_flax.data import datasets
from vit_flax.data import device as device_data
from vit_flax.figures import probe
from vit_flax.models import presets
from vit_flax.models import stats
from vit_flax.training import checkpointing
from vit_flax.training import config_checks
from vit_flax.training import distill
from vit_flax.training import host
from vit_flax.training import mesh as mesh_lib
from vit_flax.training import metrics
from vit_flax.training import optim
from vit_flax.training import preemption as preemption_lib
from vit_flax.training import step as step_lib
from vit_flax.training import workdir as workdir_lib
from vit_flax.weights import pretrained


def validate_config(config: ml_collections.ConfigDict, num_devices: int):
  """Fails fast, before any work, on values that cannot work."""
  config_checks.check_config(config, num_devices)


def check_image_sizes(model, sizes, num_channels: int = 3,
                      curriculum_sizes=()):
  """Traces the model at each size (no compute) to catch shape errors now;
  an error at a size that only `pp.curriculum` asks for names it."""
  for size in sorted(set(sizes) | set(curriculum_sizes)):
    try:
      presets.abstract_params(model, size, num_channels)
    except errors.ConfigError as e:
      if size in sizes:
        raise
      raise errors.ConfigError(
          f'pp.curriculum trains at {size}px, where the model cannot run: '
          f'{e} Choose curriculum sizes the model takes, as pp.crop '
          f'({min(sizes)}px) is.') from e


def on_devices(batches, pipeline, size: int, sharding):
  """The host pipeline's batches, `size` of them transferred ahead; those
  of the data on the devices (`device.DevicePipeline`) as they are."""
  if getattr(pipeline, 'on_device', False):
    return batches
  return mesh_lib.prefetch_to_mesh(batches, size, sharding)


def create_pipeline(config: ml_collections.ConfigDict, mesh: Mesh):
  """The data on the devices (`config.data_on_device`), or the host
  pipeline (`data/pipeline.py`, which needs TensorFlow)."""
  source = datasets.source_of(config)
  if device_data.use_data_on_device(config, source):
    return device_data.DevicePipeline(config, mesh, source)
  # TensorFlow only here: runs with the data on the devices import none.
  # pylint: disable-next=g-import-not-at-top
  from vit_flax.data import pipeline as pipeline_lib
  return pipeline_lib.Pipeline(config, jax.process_index(),
                               jax.process_count(), source=source)


def evaluate(eval_step, params, pipeline, sharding) -> Dict[str, float]:
  """Loss and accuracy over the whole eval split, each example once."""
  totals = None
  for batch in on_devices(pipeline.eval_batches(), pipeline, 2, sharding):
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
                        pipeline) -> Optional[FigureHook]:
  """`probe.summary_images` of the first eval image, or None when
  `config.eval_figures` is off or this process does not write metrics."""
  if not config.get('eval_figures') or jax.process_index() > 0:
    return None
  if getattr(pipeline, 'on_device', False):
    images = pipeline.first_eval_images()
  else:
    images = next(pipeline.eval_batches())['image'][:1]
  return functools.partial(probe.summary_images, model, images=images,
                           model_config=config.model)


@dataclasses.dataclass
class Setup:
  """What a training run is made of, built once before its first step."""

  config: ml_collections.ConfigDict
  workdir: epath.Path
  mesh: Mesh
  pipeline: Any  # pipeline.Pipeline, or device.DevicePipeline.
  model: Any
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  checkpointer: Optional[checkpointing.Checkpointer]
  lock: workdir_lib.WorkdirLock
  teacher: Optional[distill.Teacher] = None
  # Read before the workdir was touched, when it held no checkpoint.
  pretrained_params: Any = None

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
  mesh = mesh_lib.create_mesh(fsdp=config.get('mesh_fsdp', 1))
  pipeline = create_pipeline(config, mesh)
  if config.get('pretrained_path'):
    pretrained.adopt_checkpoint_settings(config)
  model = presets.create_model_for(config, pipeline.num_classes)
  check_image_sizes(
      model, [pipeline.image_size],
      curriculum_sizes=[phase.image_size for phase in pipeline.phases])
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
  pretrained_params = None
  if config.get('pretrained_path') and not checkpointing.has_checkpoints(
      workdir):  # Read now: a file that cannot be used fails before any work.
    pretrained_params = load_pretrained_params(config, model,
                                               pipeline.image_size)
  path = workdir_lib.prepare_workdir(workdir)
  # Before the checkpoints are touched (a live job may be saving).
  lock = workdir_lib.WorkdirLock(path)
  checkpointer = None
  try:
    if config.checkpoint_every:
      checkpointer = checkpointing.Checkpointer(
          path, keep=config.get('keep_checkpoints', 3))
  except BaseException:
    lock.release()
    raise
  return Setup(config=config, workdir=path, mesh=mesh, pipeline=pipeline,
               model=model, schedule=schedule, tx=tx,
               checkpointer=checkpointer, lock=lock, teacher=teacher,
               pretrained_params=pretrained_params)


def load_pretrained_params(config: ml_collections.ConfigDict, model,
                           image_size: int):
  """`config.pretrained_path` fitted to `model` (fresh head, resized
  position embeddings), as host arrays."""
  # The fresh params give the target shapes and the new head.
  fresh = jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(config.seed),
      jnp.zeros((1, image_size, image_size, 3)))['params']
  return pretrained.load_pretrained(
      pretrained_path=config.pretrained_path,
      init_params=jax.device_get(fresh), model_config=config.model)


def initial_state(
    setup: Setup) -> Tuple[step_lib.TrainState, int, Dict[str, Any]]:
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
    init_params = setup.pretrained_params
    if init_params is None:  # Every checkpoint there was set aside.
      init_params = load_pretrained_params(config, setup.model,
                                           pipeline.image_size)
    logging.info('Fine-tuning from %s.', config.pretrained_path)
  state = step_lib.create_train_state(
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
  data_sharding = mesh_lib.batch_sharding(setup.mesh)
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
  gather = setup.config.get('eval_figures') and mesh_lib.split_across_processes(
      state.params)
  if figure_hook is not None or gather:
    host_params = mesh_lib.fetch_params(state.params)
    if figure_hook is not None:
      writer.write_images(step, {f'figures/{name}': image[None]
                                 for name, image in figure_hook(
                                     host_params).items()})


class StepProfiler:
  """Traces `num_steps` steps (and at least `min_seconds`) with
  `jax.profiler` into `logdir`: from step `first_step`, then again every
  `every_seconds`, as clu's `periodic_actions.Profile` did."""

  def __init__(self, logdir, num_steps: int = 5, first_step: int = 10,
               min_seconds: float = 3.0, every_seconds: float = 3600.0):
    self.logdir = str(logdir)
    self.num_steps = num_steps
    self.first_step = first_step
    self.min_seconds = min_seconds
    self.every_seconds = every_seconds
    self.last_start = time.monotonic()
    self.started_step = None

  def __call__(self, step: int):
    """Called after each step."""
    now = time.monotonic()
    if self.started_step is not None:
      if (step >= self.started_step + self.num_steps and
          now - self.last_start >= self.min_seconds):
        jax.profiler.stop_trace()
        logging.info('Profiled steps %d-%d into %s.', self.started_step + 1,
                     step, self.logdir)
        self.started_step = None
      return
    if step == self.first_step or now - self.last_start > self.every_seconds:
      try:
        jax.profiler.start_trace(self.logdir)
      except RuntimeError as e:  # E.g. a trace already running.
        logging.warning('Could not start profiling: %s', e)
        return
      self.started_step, self.last_start = step, now

  def close(self):
    if self.started_step is not None:
      jax.profiler.stop_trace()
      self.started_step = None


def save_due(setup: Setup, step: int, stop: bool, last_save: float) -> bool:
  config = setup.config
  return setup.checkpointer is not None and (
      stop or step % config.checkpoint_every == 0 or
      step == config.total_steps or preemption_lib.should_save_by_time(
          step, last_save, config.get('checkpoint_every_minutes', 0)))


def train_loop(setup: Setup, state: step_lib.TrainState, start_step: int,
               resumed_data: Dict[str, Any], writer,
               figure_hook: Optional[FigureHook]) -> step_lib.TrainState:
  """Steps from `start_step` to `config.total_steps`, with progress reports,
  evaluations and checkpoints, until done or asked to stop (SIGTERM)."""
  config = setup.config
  train_step = step_lib.make_train_step(
      setup.model, setup.tx, setup.schedule, config, setup.num_classes,
      setup.mesh, state_shardings=jax.tree.map(lambda x: x.sharding, state),
      teacher_model=setup.teacher.model if setup.teacher else None)
  eval_step = step_lib.make_eval_step(setup.model, setup.num_classes,
                                      setup.mesh)
  profile = None
  if config.get('profile') and jax.process_index() == 0:
    profile = StepProfiler(setup.workdir)
  preemption = preemption_lib.PreemptionHandler()
  batches = on_devices(setup.pipeline.train_batches(start_step),
                       setup.pipeline, config.prefetch,
                       mesh_lib.batch_sharding(setup.mesh))
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

      if checkpointer and jax.process_count() == 1:
        # A save that failed in the background stops the run now. (Several
        # processes learn of it at their next save, which they all reach.)
        checkpointer.check_saves()
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
    if profile:
      profile.close()
  return state


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> step_lib.TrainState:
  """Trains and evaluates, resuming from `workdir` if it has a checkpoint.

  Returns the final train state (or the state where a preemption stopped).
  """
  setup = set_up(config, workdir)
  try:
    state, start_step, resumed_data = initial_state(setup)
    logging.info('Model %s: %.2fM parameters; %d classes; %d devices.',
                 config.model.get('model_name'),
                 stats.count_params(state.params) / 1e6,
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
      writer.close()
  finally:
    setup.close()  # Surfaces errors of asynchronous saves.
  return state
