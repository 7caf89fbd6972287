"""Data sources: where examples come from (in-memory arrays, image folders,
TFDS), split sizes and class names, and `get_source` that resolves
`config.dataset`. Each source yields {'image', 'label'} with the image still
encoded where the source stores it so (decoded by `decode`).
"""

import os
import re
import types
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from vit_flax import errors
from vit_flax.data import tensorflow_loader


class DataError(errors.UserError):
  """A data set, split or image folder that cannot be used as configured."""


# Sources: where examples come from. Each yields {'image', 'label'} with the
# image still encoded where the source stores it so (decoded by `decode`).


class Source:
  """A data set: split sizes, class names and the examples of one process."""

  name: str
  num_classes: int
  class_names: List[str]
  # (height, width, channels) when all images share it, else None.
  image_shape: Optional[Tuple[int, int, int]] = None

  def num_examples(self, split: str) -> int:
    raise NotImplementedError

  def read(self, split: str, process_index: int, process_count: int,
           drop_remainder: bool) -> Tuple[Any, int]:
    """This process's part of `split` as a tf.data.Dataset, in a fixed order,
    and its size."""
    raise NotImplementedError

  def read_arrays(self, split: str, process_index: int, process_count: int,
                  drop_remainder: bool
                  ) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """`read`'s examples as in-memory (images, labels), or None where the
    source streams them."""
    return None

  def decode(self, image):
    """A tf.Tensor of an image as `read` yields it -> the decoded image."""
    return image

  def load_arrays(self, split: str, process_index: int, process_count: int,
                  drop_remainder: bool) -> Tuple[np.ndarray, np.ndarray]:
    """`read`'s examples decoded into memory: uint8 images (n, height,
    width, channels) and int64 labels (n,), for `config.data_on_device`.

    Raises:
      DataError: the images do not all have one shape.
    """
    tf = tensorflow_loader.import_tensorflow()
    ds, _ = self.read(split, process_index, process_count, drop_remainder)
    ds = ds.map(lambda ex: {'image': self.decode(ex['image']),
                            'label': ex['label']},
                num_parallel_calls=tf.data.AUTOTUNE)
    images, labels = [], []
    for example in ds.as_numpy_iterator():
      images.append(example['image'])
      labels.append(example['label'])
    return stack_images(images, labels, f'{self.name} {split}')


def stack_images(images: List[np.ndarray], labels: List[int],
                 what: str) -> Tuple[np.ndarray, np.ndarray]:
  """(uint8 images stacked, int64 labels), or DataError when the images do
  not share one shape."""
  shapes = sorted({image.shape for image in images})
  if len(shapes) > 1:
    raise DataError(
        f'The images of {what} have {len(shapes)} shapes (e.g. {shapes[0]} '
        f'and {shapes[-1]}); config.data_on_device needs one shape for all. '
        'Resize them to one size beforehand, or set '
        'config.data_on_device=False (the host pipeline resizes each).')
  if not images:
    return np.zeros((0, 1, 1, 3), np.uint8), np.zeros((0,), np.int64)
  return (np.stack(images).astype(np.uint8, copy=False),
          np.asarray(labels, np.int64))


def even_part(num: int, index: int, count: int,
              drop_remainder: bool) -> Tuple[int, int]:
  """[start, end) of part `index` of `count` near-equal parts of `num`."""
  if drop_remainder:
    size = num // count
    return index * size, (index + 1) * size
  bounds = [num * i // count for i in range(count + 1)]
  return bounds[index], bounds[index + 1]


# A split name with an optional slice of example indices: 'train[:1000]'.
_INDEX_SLICE = re.compile(r'(\w+)(?:\[(-?\d+)?:(-?\d+)?\])?')


def _index_ranges(split: str, sizes: Dict[str, int]
                  ) -> Optional[List[Tuple[str, int, int]]]:
  """`_absolute_ranges` of names and index slices joined by '+', as TFDS
  resolves them, without TFDS; None for other syntax (percentages)."""
  ranges = []
  for part in split.split('+'):
    match = _INDEX_SLICE.fullmatch(part)
    if match is None:
      return None
    name, start, end = match.groups()
    if name not in sizes:
      raise DataError(f'Unknown split {name!r} in {split!r}; available '
                      f'splits: {sorted(sizes)}.')
    size = sizes[name]
    bounds = []
    for bound, default in ((start, 0), (end, size)):
      index = default if bound is None else int(bound)
      index += size if index < 0 else 0
      if not 0 <= index <= size:
        raise DataError(f'Split {split!r} asks for examples beyond the '
                        f'{size} of {name!r}.')
      bounds.append(index)
    ranges.append((name, *bounds))
  return ranges


def _absolute_ranges(split: str, sizes: Dict[str, int]) -> List[Tuple[str, int,
                                                                      int]]:
  """Resolves TFDS split syntax ('train[:98%]+test') to index ranges."""
  ranges = _index_ranges(split, sizes)
  if ranges is not None:
    return ranges
  try:
    tfds = tensorflow_loader.import_tensorflow_datasets()
  except ImportError as e:
    raise DataError(
        f'Split {split!r} needs tensorflow_datasets to resolve (percentages'
        "); without it use split names and index slices such as "
        "'train[:54000]+test'.") from e
  try:
    instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(
        {name: types.SimpleNamespace(num_examples=n)
         for name, n in sizes.items()})
  except (ValueError, KeyError, AssertionError) as e:
    raise DataError(
        f'Unknown split {split!r}; available splits: {sorted(sizes)}, with '
        "TFDS slicing such as 'train[:90%]' ({e}).") from e
  return [(i.splitname, i.from_ or 0, sizes[i.splitname] if i.to is None
           else i.to) for i in instructions]


class ArraySource(Source):
  """Examples held in memory, split by index ranges."""

  def __init__(self, name, arrays: Dict[str, Tuple[np.ndarray, np.ndarray]],
               class_names, image_shape=None):
    self.name = name
    self.arrays = arrays
    self.class_names = list(class_names)
    self.num_classes = len(self.class_names)
    self.image_shape = image_shape

  def _select(self, split):
    sizes = {k: len(v[1]) for k, v in self.arrays.items()}
    parts = [(self.arrays[n][0][a:b], self.arrays[n][1][a:b])
             for n, a, b in _absolute_ranges(split, sizes)]
    return (np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]))

  def num_examples(self, split):
    return len(self._select(split)[1])

  def _part(self, split, process_index, process_count, drop_remainder):
    images, labels = self._select(split)
    start, end = even_part(len(labels), process_index, process_count,
                           drop_remainder)
    return images[start:end], labels[start:end].astype(np.int64)

  def read_arrays(self, split, process_index, process_count, drop_remainder):
    return self._part(split, process_index, process_count, drop_remainder)

  def load_arrays(self, split, process_index, process_count, drop_remainder):
    return self._part(split, process_index, process_count, drop_remainder)

  def read(self, split, process_index, process_count, drop_remainder):
    tf = tensorflow_loader.import_tensorflow()
    images, labels = self._part(split, process_index, process_count,
                                drop_remainder)
    ds = tf.data.Dataset.from_tensor_slices({'image': images, 'label': labels})
    return ds, len(labels)


_IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')


class ImageFolderSource(Source):
  """`{root}/{split}/{class_name}/{file}` as in vit_jax; splits are folders."""

  def __init__(self, root: str):
    self.name = root
    self.root = root
    train_dir = os.path.join(root, 'train')
    if not os.path.isdir(train_dir):
      raise DataError(
          f'Image folder {root} has no train/ subfolder; expected '
          f'{root}/{{train,test}}/<class_name>/<image files>.')
    self.class_names = sorted(
        d for d in os.listdir(train_dir)
        if os.path.isdir(os.path.join(train_dir, d)))
    layout = (f'the layout is {root}/{{train,test}}/<class_name>/<image '
              f'files> ({", ".join(_IMAGE_SUFFIXES)})')
    if not self.class_names:
      raise DataError(f'{train_dir} has no class subfolders; {layout}.')
    if len(self.class_names) < 2:
      raise DataError(
          f'{train_dir} holds one class ({self.class_names[0]!r}): a '
          'classifier needs at least two, or it learns to answer that class '
          f'whatever the image; add a folder per class ({layout}).')
    if not any(f.lower().endswith(_IMAGE_SUFFIXES)
               for d in self.class_names
               for f in os.listdir(os.path.join(train_dir, d))):
      raise DataError(f'The class folders of {train_dir} hold no image '
                      f'files; {layout}.')
    self.num_classes = len(self.class_names)

  def _files(self, split):
    split_dir = os.path.join(self.root, split)
    if not os.path.isdir(split_dir):
      available = sorted(d for d in os.listdir(self.root)
                         if os.path.isdir(os.path.join(self.root, d)))
      raise DataError(f'Unknown split {split!r} of image folder {self.root}; '
                      f'available splits (subfolders): {available}.')
    paths, labels = [], []
    for label, name in enumerate(self.class_names):
      class_dir = os.path.join(split_dir, name)
      if not os.path.isdir(class_dir):
        continue
      for f in sorted(os.listdir(class_dir)):
        if f.lower().endswith(_IMAGE_SUFFIXES):
          paths.append(os.path.join(class_dir, f))
          labels.append(label)
    unknown = set(os.listdir(split_dir)) - set(self.class_names)
    if unknown:
      raise DataError(f'{split_dir} has classes absent from train/: '
                      f'{sorted(unknown)}.')
    return np.array(paths, dtype=object), np.array(labels, np.int64)

  def num_examples(self, split):
    return len(self._files(split)[1])

  def read(self, split, process_index, process_count, drop_remainder):
    tf = tensorflow_loader.import_tensorflow()
    paths, labels = self._files(split)
    start, end = even_part(len(labels), process_index, process_count,
                           drop_remainder)
    ds = tf.data.Dataset.from_tensor_slices({
        'image': paths[start:end].astype(str), 'label': labels[start:end]})
    return ds, end - start

  def decode(self, image):
    tf = tensorflow_loader.import_tensorflow()
    return tf.io.decode_image(tf.io.read_file(image), channels=3,
                              expand_animations=False)

  def load_arrays(self, split, process_index, process_count, drop_remainder):
    """Decoded with PIL (as RGB, like `decode`), without TensorFlow."""
    paths, labels = self._files(split)
    start, end = even_part(len(labels), process_index, process_count,
                            drop_remainder)
    images = []
    for path in paths[start:end]:
      with Image.open(path) as image:
        images.append(np.asarray(image.convert('RGB')))
    return stack_images(images, list(labels[start:end]), split)
