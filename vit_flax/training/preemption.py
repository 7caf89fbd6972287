"""Stopping a run cleanly on SIGTERM / SIGINT (preemption), and time-based
checkpoint intervals.
"""

import signal
import threading
import time

from absl import logging
import jax
from jax.experimental import multihost_utils

from vit_flax.training import checkpointing


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
    if step % checkpointing.MULTI_PROCESS_POLL_STEPS:
      return False
    flags = multihost_utils.process_allgather(int(self.requested.is_set()))
    return bool(max(flags))


def should_save_by_time(step: int, last_save: float, minutes: float) -> bool:
  """Time-based saves; process 0 decides so that all processes agree."""
  if not minutes:
    return False
  due = time.time() - last_save >= 60 * minutes
  if jax.process_count() > 1:
    if step % checkpointing.MULTI_PROCESS_POLL_STEPS:
      return False
    due = bool(multihost_utils.broadcast_one_to_all(due))
  return due
