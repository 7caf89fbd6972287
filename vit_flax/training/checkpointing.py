"""Preemption-safe training checkpoints with orbax, and exact resume.

`workdir/checkpoints/<step>/` holds the whole train state: params, optimizer
state, step and RNG, the input pipeline's position and the config it was made
with. The latest `keep` are kept; `workdir/checkpoints/best/<step>/` holds the
params of the best evaluation so far. Orbax writes each checkpoint under a
temporary name and renames it once complete, so a save cut short (even by
kill -9) is never taken for a checkpoint; leftovers are removed on start.
"""

import contextlib
import errno
import json
from typing import Any, Dict, List, Optional, Tuple

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint.path import atomicity
from orbax.checkpoint.checkpoint_managers import preservation_policy

from vit_flax import errors
from vit_flax.training import host

# Config fields a resumed run may not change: they define the model, the
# optimizer state's structure or the data stream.
IMMUTABLE_FIELDS = ('dataset', 'pp.train', 'model_type', 'model', 'batch',
                    'optimizer', 'optim_dtype', 'muon.conv_kernels', 'seed')
# Fields under those that only name things, so a resume may change them.
RENAMEABLE_FIELDS = ('model.model_name',)
# Multi-process runs poll signals and clocks collectively this often.
MULTI_PROCESS_POLL_STEPS = 10


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
  if bool(saved.get('ema_decay')) != bool(current.get('ema_decay')):
    raise errors.CheckpointError(
        f'config.ema_decay is {current.get("ema_decay")!r} but the checkpoint '
        f'was made with {saved.get("ema_decay")!r}: turning the EMA of the '
        'params on or off changes what the train state holds, so it cannot '
        'change when resuming (its decay can). Use the original setting, or '
        'a new workdir to start over.')
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
    raise errors.CheckpointError(
        f'{path} is a file where a checkpoint directory '
        'should be; move it away or choose another workdir.')


def has_checkpoints(workdir) -> bool:
  """Whether `workdir` holds a committed checkpoint of a run; reads only."""
  directory = epath.Path(workdir) / 'checkpoints'
  return directory.is_dir() and any(
      path.name.isdigit() and path.is_dir() for path in directory.iterdir())


class CorruptCheckpointError(errors.CheckpointError):
  """A checkpoint whose files cannot be read back as they were written."""


def fingerprint(tree) -> List[List[float]]:
  """(sum, sum of |x|) of each leaf, computed on the devices: what a
  restored checkpoint is verified against (cheap, and any corruption of the
  bytes that the file formats let through changes it)."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return []
  # One program for the whole tree: arrays split across processes (FSDP)
  # are reduced by the same collectives in every process, in one order
  # (op-by-op reductions of them can deadlock over gloo).
  meshes = {getattr(getattr(x, 'sharding', None), 'mesh', None)
            for x in leaves}
  if len(meshes) == 1 and None not in meshes:
    replicated = jax.sharding.NamedSharding(meshes.pop(),
                                            jax.sharding.PartitionSpec())
    sums = jax.jit(_leaf_sums, out_shardings=replicated)(leaves)
  else:  # Host arrays, or arrays on devices of their own.
    sums = [_leaf_sums([x])[0] for x in leaves]
  return [[float(v) for v in pair] for pair in jax.device_get(sums)]


def _leaf_sums(leaves):
  sums = []
  for x in leaves:
    x = jnp.asarray(x, jnp.float32)
    sums.append(jnp.stack([jnp.sum(x), jnp.sum(jnp.abs(x))]))
  return jnp.stack(sums)


def _fingerprints_match(saved, restored) -> bool:
  """Equal up to float summation order (a restore onto another mesh)."""
  if len(saved) != len(restored):
    return False
  return all(abs(s[0] - r[0]) <= 1e-4 * (s[1] + 1e-30) and
             abs(s[1] - r[1]) <= 1e-4 * (s[1] + 1e-30)
             for s, r in zip(saved, restored))


def _structure_mismatch(metadata, abstract) -> Optional[str]:
  """Why the saved tree (orbax metadata) cannot fill `abstract`, if so."""
  def name(path):  # Dict keys, attributes (named tuples) and indices alike.
    return '/'.join(str(next(getattr(k, a) for a in ('key', 'name', 'idx')
                             if hasattr(k, a))) for k in path)

  saved = {name(path): tuple(m.shape) for path, m in
           jax.tree_util.tree_flatten_with_path(metadata)[0]}
  wanted = {name(path): tuple(x.shape) for path, x in
            jax.tree_util.tree_flatten_with_path(abstract)[0]}
  if saved.keys() != wanted.keys():
    missing = sorted(wanted.keys() - saved.keys())[:3]
    extra = sorted(saved.keys() - wanted.keys())[:3]
    return f'other parameters (missing {missing}, extra {extra})'
  shapes = [f'{k}: {saved[k]} vs {wanted[k]}' for k in wanted
            if saved[k] != wanted[k]]
  return f'other shapes ({"; ".join(shapes[:3])})' if shapes else None


def set_aside(directory: epath.Path, step: int, reason: str) -> epath.Path:
  """Moves checkpoint `step` of `directory` to `corrupt-<step>` beside it
  (never deletes it) and logs one line; returns where it went."""
  target = directory / f'corrupt-{step}'
  suffix = 1
  while target.exists():
    target = directory / f'corrupt-{step}-{suffix}'
    suffix += 1
  if jax.process_index() == 0:
    (directory / str(step)).rename(target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'set aside {directory}/{step}')
  logging.warning('Checkpoint %s is corrupt (%s); moved it to %s.',
                  directory / str(step), reason, target)
  return target


class Checkpointer:
  """Saves and restores the train state in `workdir/checkpoints`.

  Every checkpoint records a fingerprint of its arrays; a restore verifies
  it. A checkpoint that cannot be read back (truncated or overwritten files)
  is moved to `checkpoints/corrupt-<step>/` with a warning and the run
  resumes from the newest good one; so does `best/`. A save that fails (a
  full disk) stops the run with a clear error and leaves the previous
  checkpoint as the newest.
  """

  def __init__(self, workdir, keep: int = 3, asynchronous: bool = True):
    host.quiet_orbax_logs()
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
    self._saving = {}  # Manager name -> step of its save in flight.
    self.best_accuracy = self._verified_best_accuracy()

  def _verified_best_accuracy(self) -> float:
    """The accuracy of `best/`, whose arrays are read back and verified
    (a corrupt one is set aside); -1 without one."""
    directory = self.directory / 'best'
    while (step := self.best_manager.latest_step()) is not None:
      try:
        meta = self.best_manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))['meta']
        metadata = ocp.StandardCheckpointHandler().metadata(
            directory / str(step) / 'params').tree
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), metadata)
        params = self.best_manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(target)))['params']
        if 'fingerprint' in meta and not _fingerprints_match(
            meta['fingerprint'], fingerprint(params)):
          raise CorruptCheckpointError('its arrays differ from those saved')
        return meta['eval_accuracy']
      except Exception as e:  # Orbax/TensorStore/JSON errors of many kinds.
        set_aside(directory, step, _first_line(e))
        self.best_manager.reload()
    return -1.0

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
    items = {'params': state.params, 'train': train_items}
    # The EMA is an item of its own, so that inference can read it alone.
    if state.ema_params is not None:
      items['ema_params'] = state.ema_params
    data = {'step': step, 'examples_seen': examples_seen,
            'pending_metrics': [{k: float(v) for k, v in m.items()}
                                for m in pending_metrics],
            'fingerprint': {name: fingerprint(tree)
                            for name, tree in items.items()}}
    with self._saving_errors('latest', step):
      self.manager.save(step, force=True, args=ocp.args.Composite(
          **{name: ocp.args.StandardSave(tree) for name, tree in items.items()},
          config=ocp.args.JsonSave(_json_ready(config)),
          data=ocp.args.JsonSave(data)))
    self._saving['latest'] = step
    logging.info('Saving checkpoint at step %d in %s.', step, self.directory)

  def save_if_best(self, step: int, params, config, accuracy: float,
                   ema: bool = False) -> bool:
    """Keeps `params` in `checkpoints/best/` if `accuracy` is the best yet.

    `ema` records that they are the EMA of the trained params.
    """
    if accuracy <= self.best_accuracy:
      return False
    self.best_accuracy = accuracy
    with self._saving_errors('best', step):
      self.best_manager.save(step, force=True, args=ocp.args.Composite(
          params=ocp.args.StandardSave(params),
          config=ocp.args.JsonSave(_json_ready(config)),
          meta=ocp.args.JsonSave({'step': step, 'eval_accuracy': accuracy,
                                  'ema': ema,
                                  'fingerprint': fingerprint(params)})))
    self._saving['best'] = step
    logging.info('New best eval accuracy %.4f at step %d.', accuracy, step)
    return True

  @contextlib.contextmanager
  def _saving_errors(self, name: str, step: Optional[int]):
    """Turns a failed save (this one, or the one before still in flight)
    into a CheckpointError saying what is kept and how to go on, after the
    failed save's temporary folders are removed."""
    failed_step = self._saving.get(name)
    try:
      yield
    except Exception as e:  # OSError (a full disk), TensorStore, orbax.
      manager = self.manager if name == 'latest' else self.best_manager
      if failed_step is None or failed_step == step:
        failed_step = step
      self._remove_unfinished_saves()
      kept = [s for s in manager.all_steps() if s != failed_step]
      full = ('; the disk is full' if isinstance(e, OSError) and
              e.errno == errno.ENOSPC else '')
      where = self.directory if name == 'latest' else self.directory / 'best'
      raise errors.CheckpointError(
          f'Saving the checkpoint of step {failed_step} in {where} failed '
          f'({_first_line(e)}){full}. '
          + (f'The checkpoint of step {max(kept)} is intact and stays the '
             'newest: ' if kept else 'No earlier checkpoint was saved: ') +
          'free space (or fix the cause) and run the same command again to '
          'resume.') from e

  def _remove_unfinished_saves(self) -> None:
    """Waits out saves still in flight (their errors are the one being
    reported), then deletes the temporary folders of those that failed:
    orbax would remove them only when a later run opens the workdir."""
    for manager in (self.manager, self.best_manager):
      try:
        manager.wait_until_finished()
      except Exception:  # pylint: disable=broad-except
        pass
    for directory in (self.directory, self.directory / 'best'):
      for tmp in directory.glob(f'*{atomicity.TMP_DIR_SUFFIX}*'):
        tmp.rmtree(missing_ok=True)

  def check_saves(self) -> None:
    """Raises the CheckpointError of a save that failed in the background
    (a full disk), so that the run stops at once rather than at the next
    save. Cheap: it waits only on saves that are already over (orbax
    reports a failed commit only to `wait_until_finished`)."""
    for name, manager in (('latest', self.manager),
                          ('best', self.best_manager)):
      if not manager.is_saving_in_progress():
        with self._saving_errors(name, None):
          manager.wait_until_finished()

  def restore(self, state, config: ml_collections.ConfigDict):
    """The newest good checkpoint into `state`'s structure and shardings.

    Corrupt checkpoints on the way are set aside (see the class doc).
    Returns (state, step, data position and pending metrics), or
    (state, 0, {}) unchanged when there is none.

    Raises:
      CheckpointError: a config field that cannot change has, the
        checkpoint holds another model, or every checkpoint is corrupt.
    """
    set_aside_paths = []
    while (step := self.manager.latest_step()) is not None:
      try:
        return self._restore_step(step, state, config)
      except CorruptCheckpointError as e:
        set_aside_paths.append(str(set_aside(self.directory, step, str(e))))
        self.manager.reload()
    if set_aside_paths:
      raise errors.CheckpointError(
          f'No checkpoint in {self.directory} could be restored: all were '
          f'corrupt and are kept aside ({", ".join(set_aside_paths)}). Use a '
          'new workdir to start over, or put back a copy of a good '
          'checkpoint.')
    return state, 0, {}

  def _restore_step(self, step: int, state, config):
    path = self.directory / str(step)

    def corrupt(error):
      return CorruptCheckpointError(
          f'{type(error).__name__}: {_first_line(error)}')

    try:
      saved = self.manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore(), data=ocp.args.JsonRestore()))
    except Exception as e:  # Unreadable JSON.
      raise corrupt(e) from e
    check_resumable(saved['config'], config)
    if saved['data'].get('step') != step:
      raise CorruptCheckpointError(f'it records data position '
                                   f'{saved["data"]} for step {step}')
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    items = {'params': abstract.params,
             'train': {'opt_state': abstract.opt_state,
                       'step': abstract.step, 'rng': abstract.rng}}
    if abstract.ema_params is not None:
      items['ema_params'] = abstract.ema_params
    for name, tree in items.items():
      try:
        metadata = ocp.StandardCheckpointHandler().metadata(path / name).tree
      except Exception as e:  # Missing or unreadable metadata.
        raise corrupt(e) from e
      mismatch = _structure_mismatch(metadata, tree)
      if mismatch:
        raise errors.CheckpointError(
            f'Cannot restore the checkpoint {path}: its {name} have '
            f'{mismatch}. It was written by another model or optimizer; use '
            'the config it was made with, or a new workdir to start over.')
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          **{name: ocp.args.StandardRestore(tree)
             for name, tree in items.items()}))
    except Exception as e:  # Orbax/TensorStore errors of many kinds.
      raise corrupt(e) from e
    saved_fingerprints = saved['data'].get('fingerprint', {})
    for name in items:
      if name in saved_fingerprints and not _fingerprints_match(
          saved_fingerprints[name], fingerprint(restored[name])):
        raise CorruptCheckpointError(
            f'its {name} differ from those saved (fingerprint)')
    train_items = restored['train']
    state = state.replace(params=restored['params'],
                          opt_state=train_items['opt_state'],
                          step=train_items['step'], rng=train_items['rng'],
                          ema_params=restored.get('ema_params'))
    logging.info('Resumed from %s: step %d, %d examples seen.', path, step,
                 saved['data']['examples_seen'])
    return state, step, saved['data']

  def wait(self) -> None:
    """Blocks until pending saves are complete; raises their errors."""
    with self._saving_errors('latest', None):
      self.manager.wait_until_finished()
    with self._saving_errors('best', None):
      self.best_manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
    self.best_manager.close()


def restore_for_inference(workdir, which: str = 'latest', ema: bool = False
                          ) -> Tuple[ml_collections.ConfigDict, Any]:
  """(config, params as numpy) of a run's latest or best checkpoint.

  With `ema`, the EMA of the params (`config.ema_decay`): the latest
  checkpoint's, or the best one, which then holds the EMA.
  """
  if which not in ('latest', 'best'):
    raise errors.CheckpointError(
        f'Unknown checkpoint {which!r}; expected latest or best (or a .npz '
        'path where that is accepted).')
  if epath.Path(workdir).is_file():
    raise errors.CheckpointError(
        f'{workdir} is a file, not the workdir of a run (the folder a run '
        'was trained in, holding checkpoints/); give that folder, or the '
        'file as a weights file where one is accepted (e.g. --checkpoint= '
        'for an .npz).')
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
    path = directory / str(step)
    item = 'params'
    if ema and which == 'latest':
      item = 'ema_params'
      if not (path / item).is_dir():
        raise errors.CheckpointError(
            f'{path} holds no EMA of the params: the run was trained without '
            'config.ema_decay; drop --ema to use its params.')
    try:
      if ema and which == 'best':
        meta = manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))['meta']
        if not meta.get('ema'):
          raise errors.CheckpointError(
              f'The best checkpoint {path} holds the trained params, not an '
              'EMA (the run was trained without config.ema_decay); drop --ema '
              'to use them.')
      # Onto one local device, whatever mesh or process count saved them.
      metadata = ocp.StandardCheckpointHandler().metadata(path / item).tree
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      target = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
          metadata)
      restored = manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore(),
          **{item: ocp.args.StandardRestore(target)}))
    except errors.CheckpointError:
      raise
    except Exception as e:  # Orbax/tensorstore errors of many kinds.
      raise errors.CheckpointError(
          f'Cannot read the checkpoint {path} ({type(e).__name__}: '
          f'{_first_line(e)}); it is corrupt.') from e
  finally:
    manager.close()  # Its background threads, on errors too.
  params = jax.tree.map(jax.device_get, restored[item])
  logging.info('Loaded the %s of the %s checkpoint of step %d from %s.',
               'EMA' if ema else 'params', which, step, directory)
  return ml_collections.ConfigDict(restored['config']), params


def _first_line(error: BaseException, limit: int = 300) -> str:
  """An exception's message cut to its first line: orbax and TensorStore
  errors print whole specs, screens long."""
  text = str(error).strip().splitlines()
  first = text[0] if text else type(error).__name__
  return first if len(first) <= limit else first[:limit] + '...'
