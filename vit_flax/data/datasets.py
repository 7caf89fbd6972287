"""Which `Source` a config's `dataset` names: an image folder, Fashion-MNIST's
IDX files (offline), or a TFDS data set."""

import glob
import os
from typing import Optional

from absl import logging

from vit_flax.data import idx
from vit_flax.data import sources


def tfds_prepared(name: str, data_dir: Optional[str]) -> bool:
  """Whether TFDS holds `name` prepared, without building it (a builder of
  an unprepared data set logs a warning on every run)."""
  # TFDS's own default (tfds.core.constants.DATA_DIR), without importing it.
  root = data_dir or os.environ.get(
      'TFDS_DATA_DIR', os.path.join('~', 'tensorflow_datasets'))
  return bool(glob.glob(os.path.join(os.path.expanduser(root), name, '*',
                                     'dataset_info.json')))


def get_source(dataset: str, data_dir: Optional[str] = None,
               manual_dir: Optional[str] = None) -> sources.Source:
  """Resolves `config.dataset`: an image folder, offline data, or TFDS."""
  if not dataset:
    raise sources.DataError('config.dataset is empty; give a TFDS name (e.g. '
                            'cifar10) or a directory of images.')
  if os.path.isdir(dataset):
    return sources.ImageFolderSource(dataset)
  if dataset == 'fashion_mnist':
    idx_dir = idx.fashion_mnist_idx_dir(manual_dir)
    if idx_dir and not tfds_prepared(dataset, data_dir):
      logging.info('fashion_mnist: reading the IDX files in %s', idx_dir)
      return idx.fashion_mnist_from_idx(idx_dir)
  # TensorFlow only for TFDS data sets.
  from vit_flax.data import tfds_source  # pylint: disable=g-import-not-at-top
  return tfds_source.TfdsSource(dataset, data_dir, manual_dir)


def source_of(config) -> sources.Source:
  """The source of `config.dataset`, with the config's TFDS directories."""
  return get_source(config.dataset, config.get('tfds_data_dir'),
                    config.get('tfds_manual_dir'))
