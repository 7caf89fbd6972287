"""Any TFDS data set with 'image' and 'label' features, as a `sources.Source`.
"""


from absl import logging

from vit_flax.data import sources
from vit_flax.data import tensorflow_loader

tf = tensorflow_loader.import_tensorflow()
tfds = tensorflow_loader.import_tensorflow_datasets()


class TfdsSource(sources.Source):
  """Any TFDS data set with 'image' and 'label' features."""

  def __init__(self, name, data_dir=None, manual_dir=None):
    self.name = name
    try:
      self.builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise sources.DataError(
          f'Unknown dataset {name!r}: it is neither a TFDS name (see '
          'https://www.tensorflow.org/datasets/catalog; e.g. cifar10, '
          'imagenet2012, fashion_mnist) nor a directory of images '
          '{train,test}/<class>/<file>.') from e
    features = self.builder.info.features
    if 'image' not in features or 'label' not in features:
      raise sources.DataError(
          f'TFDS dataset {name} has features {list(features)}; '
          "vit_flax needs 'image' and 'label'.")
    self.class_names = list(features['label'].names)
    self.num_classes = features['label'].num_classes
    shape = features['image'].shape
    self.image_shape = tuple(shape) if None not in shape else None
    self._image_feature = features['image']
    self._manual_dir = manual_dir
    self._prepared = False

  def _prepare(self):
    if self._prepared:
      return
    # Prepared splits (or a mocked builder in tests) need no download.
    if not self.builder.info.splits and not self.builder.is_prepared():
      logging.info('Preparing TFDS dataset %s in %s', self.name,
                   self.builder.data_dir)
      try:
        self.builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=self._manual_dir))
      except Exception as e:  # Network, checksum and manual-file errors.
        raise sources.DataError(
            f'Could not download and prepare TFDS dataset {self.name!r} in '
            f'{self.builder.data_dir} ({type(e).__name__}: {e}). Without a '
            f'network, prepare it elsewhere (`tfds build {self.name}`) and set '
            'config.tfds_data_dir to that directory, or set '
            'config.tfds_manual_dir for data sets downloaded by hand.') from e
    self._prepared = True

  def _check_split(self, split):
    splits = self.builder.info.splits
    if not splits:
      return  # Mocked data in tests: any split is served.
    try:
      splits[split]  # pylint: disable=pointless-statement
    except (KeyError, ValueError) as e:
      raise sources.DataError(
          f'Unknown split {split!r} of dataset {self.name}; available '
          f'splits: {sorted(splits)}, with TFDS slicing such as '
          "'train[:90%]'.") from e

  def _dataset(self, split):
    self._prepare()
    self._check_split(split)
    decoders = None
    if isinstance(self._image_feature, tfds.features.Image):
      # Decode after shuffling: the shuffle buffer holds encoded images.
      decoders = {'image': tfds.decode.SkipDecoding()}
    ds = self.builder.as_dataset(split=split, decoders=decoders,
                                 shuffle_files=False)
    return ds.map(lambda ex: {'image': ex['image'], 'label': ex['label']})

  def _count(self, split, ds):
    try:
      return self.builder.info.splits[split].num_examples
    except (KeyError, ValueError):
      cardinality = int(ds.cardinality())
      if cardinality >= 0:
        return cardinality
      return int(ds.reduce(0, lambda n, _: n + 1))

  def num_examples(self, split):
    return self._count(split, self._dataset(split))

  def read(self, split, process_index, process_count, drop_remainder):
    if process_count > 1:
      split = tfds.even_splits(split, n=process_count,
                               drop_remainder=drop_remainder)[process_index]
    ds = self._dataset(split)
    return ds, self._count(split, ds)

  def decode(self, image):
    if image.dtype == tf.string:
      return self._image_feature.decode_example(image)
    return image
