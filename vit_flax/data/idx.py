"""Fashion-MNIST from its original IDX files (Debian's `dataset-fashion-mnist`
package), as TFDS presents it.
"""

import gzip
import math
import os
from typing import Optional

import numpy as np

from vit_flax.data import sources

# Debian's `dataset-fashion-mnist` package puts the original IDX files here.
FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
# The label names of TFDS's `fashion_mnist`, in its order.
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                         'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')


def read_idx(path: str) -> np.ndarray:
  """Reads a (gzipped) IDX file, the format of (Fashion-)MNIST."""
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'rb') as f:
    data = f.read()
  if len(data) < 4 or data[:2] != b'\x00\x00' or data[2] != 0x08:
    raise sources.DataError(f'{path} is not an unsigned-byte IDX file.')
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big')
                for i in range(ndim))
  body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if body.size != math.prod(shape):
    raise sources.DataError(
        f'{path} holds {body.size} bytes for shape {shape}; the '
        'file is truncated or corrupt.')
  return body.reshape(shape)


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes `array` as a gzipped unsigned-byte IDX file (`read_idx`)."""
  array = np.asarray(array, np.uint8)
  header = bytes([0, 0, 8, array.ndim]) + b''.join(
      d.to_bytes(4, 'big') for d in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.tobytes())


def fashion_mnist_idx_dir(manual_dir: Optional[str]) -> Optional[str]:
  """The directory holding Fashion-MNIST's four IDX files, if any."""
  for directory in (manual_dir, FASHION_MNIST_DIR):
    if directory and all(
        os.path.exists(os.path.join(directory, f))
        for files in FASHION_MNIST_FILES.values() for f in files):
      return directory
  return None


def fashion_mnist_from_idx(directory: str) -> sources.ArraySource:
  """Fashion-MNIST from the original IDX files, as TFDS presents it."""
  arrays = {}
  for split, (images, labels) in FASHION_MNIST_FILES.items():
    arrays[split] = (read_idx(os.path.join(directory, images))[..., None],
                     read_idx(os.path.join(directory, labels)))
  return sources.ArraySource('fashion_mnist',
                             arrays,
                             FASHION_MNIST_CLASSES,
                             image_shape=(28, 28, 1))
