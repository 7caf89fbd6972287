"""A run's workdir: created, checked writable, and held by one job at a time.

Two jobs on one workdir (a second `main.py` started by mistake, a requeued
job while the old one still runs) would interleave checkpoints and metrics.
`WorkdirLock` takes an exclusive `flock` on `WORKDIR/.lock` for the run's
lifetime and writes who holds it there; a second job is refused with a
message naming the holder. The kernel drops the lock when its process dies,
even by kill -9, so a stale `.lock` file never blocks a restart. Only process
0 of a multi-process job locks (one lock per job); the others learn the
outcome from it. Storage without `flock` (gs://, some network file systems)
runs without the lock, with a log line saying so.
"""

import datetime
import errno
import fcntl
import json
import os
import socket
from typing import Optional

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils

from vit_flax import errors

LOCK_NAME = '.lock'


class WorkdirInUseError(errors.UserError):
  """Another live job holds the workdir."""


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


def _holder(path: str) -> str:
  """Who the lock file says holds it."""
  try:
    with open(path) as f:
      info = json.load(f)
    return (f'process {info["pid"]} on {info["host"]} (started '
            f'{info["started"]})')
  except (OSError, ValueError, KeyError):
    return 'another process'


class WorkdirLock:
  """An exclusive lock on a workdir for one job; `release()` at the end."""

  def __init__(self, workdir: epath.Path):
    self.path = os.path.join(os.fspath(workdir), LOCK_NAME)
    self._file = None
    message = None
    if jax.process_index() == 0:
      message = self._acquire()
    if jax.process_count() > 1:  # Every process learns if process 0 failed.
      failed = multihost_utils.broadcast_one_to_all(int(message is not None))
      if failed and message is None:
        message = (f'workdir {workdir} is in use by another job (see '
                   f'{self.path} on the host of process 0).')
    if message:
      raise WorkdirInUseError(message)

  def _acquire(self) -> Optional[str]:
    """Takes the lock; returns why not (another job holds it), or None."""
    if '://' in self.path:
      logging.info('Workdir %s is not a local path: running without a lock '
                   'against a second job on it.', os.path.dirname(self.path))
      return None
    handle = open(self.path, 'a+')  # pylint: disable=consider-using-with
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      handle.close()
      if e.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
        return (
            f'workdir {os.path.dirname(self.path)} is in use by '
            f'{_holder(self.path)}: two runs on one workdir would interleave '
            'their checkpoints and metrics. Wait for it to finish or stop '
            'it, or give this run another --workdir.')
      logging.info('No lock on %s (%s): running without a lock against a '
                   'second job on this workdir.', self.path, e)
      return None
    handle.seek(0)
    handle.truncate()
    json.dump({'pid': os.getpid(), 'host': socket.gethostname(),
               'started': datetime.datetime.now().isoformat(
                   timespec='seconds')}, handle)
    handle.flush()
    self._file = handle
    return None

  def release(self) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None
