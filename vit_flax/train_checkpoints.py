"""Preemption-safe training checkpoints with orbax, and exact resume.

`workdir/checkpoints/<step>/` holds the whole train state: params, optimizer
state, step and RNG, the input pipeline's position and the config it was made
with. The latest `keep` are kept; `workdir/checkpoints/best/<step>/` holds the
params of the best evaluation so far. Orbax writes each checkpoint under a
temporary name and renames it once complete, so a save cut short (even by
kill -9) is never taken for a checkpoint; leftovers are removed on start.
"""

import json
import logging as std_logging
import signal
import threading
import time
from typing import Any, Dict, Optional, Tuple

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from vit_flax import errors

# Config fields a resumed run may not change: they define the model, the
# optimizer state's structure or the data stream.
IMMUTABLE_FIELDS = ('dataset', 'pp.train', 'model_type', 'model', 'batch',
                    'optimizer', 'optim_dtype', 'seed')
# Fields under those that only name things, so a resume may change them.
RENAMEABLE_FIELDS = ('model.model_name',)
# Multi-process runs poll signals and clocks collectively this often.
MULTI_PROCESS_POLL_STEPS = 10


class _OrbaxInfoFilter(std_logging.Filter):
  """Drops orbax's INFO records (several per save); keeps its warnings."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or (
        'orbax' not in record.pathname)


def quiet_orbax_logs() -> None:
  logger = std_logging.getLogger('absl')
  if not any(isinstance(f, _OrbaxInfoFilter) for f in logger.filters):
    logger.addFilter(_OrbaxInfoFilter())


def _json_ready(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The config as plain JSON values (tuples become lists)."""
  return json.loads(config.to_json_best_effort())


def _field(tree: Dict[str, Any], dotted: str):
  for key in dotted.split('.'):
    if not isinstance(tree, dict) or key not in tree:
      return None
    tree = tree[key]
  return tree


def _changed_fields(old: Any, new: Any, prefix: str = ''):
  """Dotted names of the leaves that differ between two JSON trees."""
  if isinstance(old, dict) and isinstance(new, dict):
    for key in sorted(set(old) | set(new)):
      yield from _changed_fields(old.get(key), new.get(key),
                                 f'{prefix}{key}.')
  elif old != new:
    yield prefix[:-1]


def check_resumable(saved: Dict[str, Any],
                    config: ml_collections.ConfigDict) -> None:
  """Raises if an immutable field changed; logs the fields that did change."""
  current = _json_ready(config)
  for name in _changed_fields(saved, current):
    if name not in RENAMEABLE_FIELDS and any(
        name == f or name.startswith(f + '.') for f in IMMUTABLE_FIELDS):
      raise errors.CheckpointError(
          f'config.{name} is {_field(current, name)!r} but the checkpoint '
          f'was made with {_field(saved, name)!r}; it cannot change when '
          f'resuming. Use the original value, or a new workdir to start '
          'over.')
    logging.warning('config.%s changed from %r to %r since the checkpoint; '
                    'using the new value.', name, _field(saved, name),
                    _field(current, name))


def _open_directory(path: epath.Path) -> None:
  if path.exists() and not path.is_dir():
    raise errors.CheckpointError(f'{path} is a file where a checkpoint directory '
                          'should be; move it away or choose another workdir.')


class Checkpointer:
  """Saves and restores the train state in `workdir/checkpoints`."""

  def __init__(self, workdir, keep: int = 3, asynchronous: bool = True):
    quiet_orbax_logs()
    self.directory = epath.Path(workdir) / 'checkpoints'
    _open_directory(self.directory)
    _open_directory(self.directory / 'best')
    def options(keep, name):
      return ocp.CheckpointManagerOptions(
          preservation_policy=preservation_policy.LatestN(keep),
          enable_async_checkpointing=asynchronous,
          cleanup_tmp_directories=True,
          # The two managers save concurrently; across processes their
          # barriers must have distinct names, or one process's barrier of
          # one manager meets the other's ("already ongoing") and hangs.
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              barrier_sync_key_prefix=name))

    try:
      self.manager = ocp.CheckpointManager(self.directory,
                                           options=options(keep, 'latest'))
      self.best_manager = ocp.CheckpointManager(
          self.directory / 'best', options=options(1, 'best'))
    except OSError as e:
      raise errors.CheckpointError(
          f'Cannot use checkpoint directory {self.directory} ({e}); check '
          'that the workdir is writable.') from e
    self.best_accuracy = self._saved_best_accuracy()

  def _saved_best_accuracy(self) -> float:
    step = self.best_manager.latest_step()
    if step is None:
      return -1.0
    meta = self.best_manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    return meta['eval_accuracy']

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state, config: ml_collections.ConfigDict,
           examples_seen: int, pending_metrics=()) -> None:
    """Starts saving `state` at `step` (asynchronously by default).

    `pending_metrics` are the train metrics of the steps since the last
    report, so that a resumed run reports the same averages.
    """
    train_items = {'opt_state': state.opt_state, 'step': state.step,
                   'rng': state.rng}
    self.manager.save(step, force=True, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        train=ocp.args.StandardSave(train_items),
        config=ocp.args.JsonSave(_json_ready(config)),
        data=ocp.args.JsonSave({
            'step': step, 'examples_seen': examples_seen,
            'pending_metrics': [{k: float(v) for k, v in m.items()}
                                for m in pending_metrics]})))
    logging.info('Saving checkpoint at step %d in %s.', step, self.directory)

  def save_if_best(self, step: int, params, config, accuracy: float) -> bool:
    """Keeps `params` in `checkpoints/best/` if `accuracy` is the best yet."""
    if accuracy <= self.best_accuracy:
      return False
    self.best_accuracy = accuracy
    self.best_manager.save(step, force=True, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        config=ocp.args.JsonSave(_json_ready(config)),
        meta=ocp.args.JsonSave({'step': step, 'eval_accuracy': accuracy})))
    logging.info('New best eval accuracy %.4f at step %d.', accuracy, step)
    return True

  def restore(self, state, config: ml_collections.ConfigDict):
    """The latest complete checkpoint into `state`'s structure and shardings.

    Returns (state, step, data position and pending metrics), or
    (state, 0, {}) unchanged when there is none.
    """
    step = self.manager.latest_step()
    if step is None:
      return state, 0, {}
    path = self.directory / str(step)
    try:
      saved = self.manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore(), data=ocp.args.JsonRestore()))
      check_resumable(saved['config'], config)
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
      restored = self.manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract.params),
          train=ocp.args.StandardRestore({
              'opt_state': abstract.opt_state, 'step': abstract.step,
              'rng': abstract.rng})))
    except errors.CheckpointError:
      raise
    except Exception as e:  # Orbax/tensorstore errors of many kinds.
      raise errors.CheckpointError(
          f'Cannot restore the checkpoint {path} ({type(e).__name__}: {e}). '
          'It is corrupt or was written by another model or optimizer; '
          f'delete {path} to resume from an earlier checkpoint, or use a new '
          'workdir to start over.') from e
    if saved['data']['step'] != step:
      raise errors.CheckpointError(f'{path} records data position '
                            f'{saved["data"]} for step {step}.')
    train_items = restored['train']
    state = state.replace(params=restored['params'],
                          opt_state=train_items['opt_state'],
                          step=train_items['step'], rng=train_items['rng'])
    logging.info('Resumed from %s: step %d, %d examples seen.', path, step,
                 saved['data']['examples_seen'])
    return state, step, saved['data']

  def wait(self) -> None:
    """Blocks until pending saves are complete; raises their errors."""
    self.manager.wait_until_finished()
    self.best_manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
    self.best_manager.close()


def restore_for_inference(workdir, which: str = 'latest'
                          ) -> Tuple[ml_collections.ConfigDict, Any]:
  """(config, params as numpy) of a run's latest or best checkpoint."""
  if which not in ('latest', 'best'):
    raise errors.CheckpointError(f'Unknown checkpoint {which!r}; expected latest or '
                          'best (or a .npz path where that is accepted).')
  directory = epath.Path(workdir) / 'checkpoints'
  if which == 'best':
    directory = directory / 'best'
  if not directory.is_dir():
    raise errors.CheckpointError(
        f'No checkpoints in {directory}: is {workdir} the workdir of a run '
        f'that saved a{" best" if which == "best" else ""} checkpoint?')
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True))
  try:
    step = manager.latest_step()
    if step is None:
      raise errors.CheckpointError(f'No complete checkpoint in {directory}.')
    try:
      # Onto one local device, whatever mesh or process count saved them.
      metadata = ocp.StandardCheckpointHandler().metadata(
          directory / str(step) / 'params').tree
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      target = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
          metadata)
      restored = manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore(),
          params=ocp.args.StandardRestore(target)))
    except Exception as e:  # Orbax/tensorstore errors of many kinds.
      raise errors.CheckpointError(
          f'Cannot read the checkpoint {directory / str(step)} '
          f'({type(e).__name__}: {e}); it is corrupt.') from e
  finally:
    manager.close()  # Its background threads, on errors too.
  params = jax.tree.map(jax.device_get, restored['params'])
  logging.info('Loaded %s checkpoint of step %d from %s.', which, step,
               directory)
  return ml_collections.ConfigDict(restored['config']), params


class PreemptionHandler:
  """Turns SIGTERM/SIGINT into a request to save and stop after this step.

  Orbax's own preemption policy only fires when `jax.distributed` is
  initialised; a single process handles the signals itself. In a
  multi-process run the processes agree on the step to stop at.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = threading.Event()
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    logging.warning('Received %s: saving after this step, then stopping. '
                    'Send it again to stop at once.',
                    signal.Signals(signum).name)
    self.requested.set()
    self.restore_handlers()  # A second signal acts as usual.

  def restore_handlers(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def should_stop(self, step: int) -> bool:
    """Whether every process should save and stop after `step`."""
    if jax.process_count() == 1:
      return self.requested.is_set()
    if multihost_utils.reached_preemption_sync_point(step):
      return True
    # Processes may get the signal at different steps: agree with a gather,
    # every few steps only since it waits for the devices.
    if step % MULTI_PROCESS_POLL_STEPS:
      return False
    flags = multihost_utils.process_allgather(int(self.requested.is_set()))
    return bool(max(flags))


def should_save_by_time(step: int, last_save: float, minutes: float) -> bool:
  """Time-based saves; process 0 decides so that all processes agree."""
  if not minutes:
    return False
  due = time.time() - last_save >= 60 * minutes
  if jax.process_count() > 1:
    if step % MULTI_PROCESS_POLL_STEPS:
      return False
    due = bool(multihost_utils.broadcast_one_to_all(due))
  return due
