"""TensorBoard metrics that stay whole across preemptions.

A run killed after its last checkpoint redoes some steps when it resumes. The
writer here reads what earlier runs already wrote to the workdir and skips
those (tag, step) pairs, so every curve has each step exactly once: nothing
is lost (writes happen at once) and nothing is written twice.
"""

import glob
import os
from typing import Any, Dict, List, Mapping, Tuple

from absl import logging
from clu import metric_writers
import tensorflow as tf


def _events(logdir):
  """(tag, step, wall time, summary value) of every event file in `logdir`,
  in order.

  A record cut short by a killed process ends its file.
  """
  paths = sorted(glob.glob(os.path.join(str(logdir), 'events.out.tfevents*')),
                 key=os.path.getmtime)
  for path in paths:
    try:
      for record in tf.data.TFRecordDataset(path):
        event = tf.compat.v1.Event.FromString(record.numpy())
        for value in event.summary.value:
          yield value.tag, event.step, event.wall_time, value
    except tf.errors.DataLossError:
      logging.warning('%s ends in a partial record (a killed run); its '
                      'complete records are used.', path)


def read_scalar_events(logdir) -> Dict[str, List[Tuple[int, float, float]]]:
  """{tag: [(step, wall time, value), ...]} of the scalars in `logdir`.

  In the order written; duplicates are kept, so that callers can check there
  are none.
  """
  scalars = {}
  for tag, step, wall_time, value in _events(logdir):
    if value.HasField('tensor'):
      array = tf.make_ndarray(value.tensor)
      if array.ndim or array.dtype.kind not in 'fiu':
        continue  # hparams and other summaries that are not numbers.
      number = float(array)
    elif value.HasField('simple_value'):
      number = float(value.simple_value)
    else:
      continue
    scalars.setdefault(tag, []).append((step, float(wall_time), number))
  return scalars


def read_scalars(logdir) -> Dict[str, List[Tuple[int, float]]]:
  """{tag: [(step, value), ...]} of the scalars in `logdir`, in order."""
  return {tag: [(step, number) for step, _, number in points]
          for tag, points in read_scalar_events(logdir).items()}


def read_steps(logdir) -> Dict[str, List[int]]:
  """{tag: [step, ...]} of every summary (scalars, images, ...) in `logdir`."""
  steps = {}
  for tag, step, _, _ in _events(logdir):
    steps.setdefault(tag, []).append(step)
  return steps


class ResumableWriter:
  """A clu metric writer that skips steps an earlier run already wrote."""

  def __init__(self, workdir, just_logging: bool = False):
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=just_logging)
    self.last_step = {}
    self.has_history = False
    if not just_logging:
      self.last_step = {tag: max(steps)
                        for tag, steps in read_steps(workdir).items()}
      self.has_history = bool(self.last_step)
    if self.has_history:
      logging.info('Metrics up to step %d are already in %s; not rewriting '
                   'them.', max(self.last_step.values()), workdir)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    new = {k: v for k, v in scalars.items()
           if step > self.last_step.get(k, -1)}
    if new:
      self.writer.write_scalars(step, new)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    if not self.has_history:
      self.writer.write_hparams(hparams)

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    new = {k: v for k, v in images.items()
           if step > self.last_step.get(k, -1)}
    if new:
      self.writer.write_images(step, new)

  def flush(self) -> None:
    self.writer.flush()
