"""TensorBoard metrics that stay whole across preemptions, without TensorFlow.

A run killed after its last checkpoint redoes some steps when it resumes. The
writer here reads what earlier runs already wrote to the workdir and skips
those (tag, step) pairs, so every curve has each step exactly once: nothing
is lost (writes happen at once) and nothing is written twice.
"""

import io
import os
import socket
import struct
import time
from typing import Any, Dict, Iterator, List, Mapping, Tuple

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer import record_writer
from tensorboard.util import tensor_util

_EVENT_FILES = 'events.out.tfevents*'


class _CutShort(Exception):
  """A record ends before its length says (the writer was killed)."""


def _records(path: epath.Path) -> Iterator[bytes]:
  """The records of a TFRecord file: (length, its masked CRC-32C, data, the
  data's CRC). The data's CRC is not checked: tensorboard's pure-Python
  CRC would take seconds per megabyte of images, and a kill cuts a record
  short, which the lengths show."""
  with path.open('rb') as f:
    while True:
      header = f.read(12)
      if not header:
        return
      if len(header) < 12:
        raise _CutShort()
      (length,) = struct.unpack('<Q', header[:8])
      (crc,) = struct.unpack('<I', header[8:])
      if crc != pywrap_tensorflow.masked_crc32c(header[:8]):
        raise _CutShort()
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:
        raise _CutShort()
      yield data


def _events(logdir):
  """(tag, step, wall time, summary value) of every event file in `logdir`,
  in order.

  A record cut short by a killed process ends its file.
  """
  paths = sorted(epath.Path(logdir).glob(_EVENT_FILES),
                 key=lambda p: p.stat().mtime)
  for path in paths:
    try:
      for record in _records(path):
        event = event_pb2.Event.FromString(record)
        for value in event.summary.value:
          yield value.tag, event.step, event.wall_time, value
    except _CutShort:
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
      array = tensor_util.make_ndarray(value.tensor)
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


def _png(image: np.ndarray) -> bytes:
  """PNG of an image (height, width, 1, 3 or 4 channels): uint8 as it is,
  floats in [0, 1] scaled to 0-255 (as tf.summary.image does)."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()


class SummaryWriter:
  """TensorBoard summaries of scalars, images and hparams in an event file
  of `logdir`, written at once, without TensorFlow (as tf.summary writes
  them: float32 scalar tensors, PNG images, the hparams plugin's start
  info)."""

  def __init__(self, logdir):
    logdir = epath.Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    # Time (seconds), host and process: distinct for each run.
    self.path = logdir / (f'events.out.tfevents.{int(time.time()):010d}.'
                          f'{socket.gethostname()}.{os.getpid()}.v2')
    self._file = self.path.open('ab')
    self._records = record_writer.RecordWriter(self._file)
    self._write(event_pb2.Event(wall_time=time.time(),
                                file_version='brain.Event:2'))

  def _write(self, event: event_pb2.Event) -> None:
    self._records.write(event.SerializeToString())
    self._file.flush()

  def write_summary(self, step: int, summary: summary_pb2.Summary) -> None:
    self._write(event_pb2.Event(wall_time=time.time(), step=step,
                                summary=summary))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    metadata = scalar_metadata.create_summary_metadata('', '')
    self.write_summary(step, summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(
            tag=tag, metadata=metadata,
            tensor=tensor_util.make_tensor_proto(np.float32(value)))
        for tag, value in scalars.items()]))

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    """`images`: tag -> (count, height, width, channels)."""
    metadata = image_metadata.create_summary_metadata('', '')
    values = []
    for tag, batch in images.items():
      batch = np.asarray(batch)
      # The image plugin's tensor: width, height, then one PNG per image.
      strings = [str(batch.shape[2]).encode(), str(batch.shape[1]).encode()]
      strings += [_png(image) for image in batch]
      values.append(summary_pb2.Summary.Value(
          tag=tag, metadata=metadata,
          tensor=tensor_util.make_tensor_proto(np.array(strings, object))))
    self.write_summary(step, summary_pb2.Summary(value=values))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    self.write_summary(0, hparams_summary.hparams_pb(dict(hparams)))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class LoggingWriter:
  """The same calls, as INFO lines of the log."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    logging.info('[%d] %s', step, ', '.join(
        f'{k}={v:.6g}' if isinstance(v, float) else f'{k}={v}'
        for k, v in sorted(scalars.items())))

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    logging.info('[%d] Got images: %s.', step,
                 {k: np.shape(v) for k, v in images.items()})

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    logging.info('[Hyperparameters] %s', dict(hparams))

  def flush(self) -> None:
    logging.flush()

  def close(self) -> None:
    self.flush()


class ResumableWriter:
  """Writes metrics to the log and (unless `just_logging`) to TensorBoard
  event files in `workdir`, skipping the steps an earlier run already
  wrote."""

  def __init__(self, workdir, just_logging: bool = False):
    self.writers = [LoggingWriter()]
    self.last_step = {}
    self.has_history = False
    if not just_logging:
      self.last_step = {tag: max(steps)
                        for tag, steps in read_steps(workdir).items()}
      self.has_history = bool(self.last_step)
      self.writers.append(SummaryWriter(workdir))
    if self.has_history:
      logging.info('Metrics up to step %d are already in %s; not rewriting '
                   'them.', max(self.last_step.values()), workdir)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    new = {k: v for k, v in scalars.items()
           if step > self.last_step.get(k, -1)}
    if new:
      for writer in self.writers:
        writer.write_scalars(step, new)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    if not self.has_history:
      for writer in self.writers:
        writer.write_hparams(hparams)

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    new = {k: v for k, v in images.items()
           if step > self.last_step.get(k, -1)}
    if new:
      for writer in self.writers:
        writer.write_images(step, new)

  def flush(self) -> None:
    for writer in self.writers:
      writer.flush()

  def close(self) -> None:
    for writer in self.writers:
      writer.close()
