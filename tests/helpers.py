"""Shared helpers for the tests: tiny configs, reading what a run wrote."""

import glob
import os

import ml_collections
import tensorflow as tf


def tiny_model_config(classifier='token', hidden_size=16, num_layers=2,
                      patch=4, **overrides) -> ml_collections.ConfigDict:
  """A ViT small enough that init, forward and a few steps take milliseconds."""
  config = ml_collections.ConfigDict({
      'model_name': 'tiny',
      'patches': {'size': (patch, patch)},
      'hidden_size': hidden_size,
      'transformer': {
          'mlp_dim': 2 * hidden_size,
          'num_heads': 2,
          'num_layers': num_layers,
          'attention_dropout_rate': 0.0,
          'dropout_rate': 0.0,
      },
      'classifier': classifier,
      'representation_size': None,
  })
  config.update(overrides)
  return config


def read_scalars(workdir) -> dict:
  """{tag: {step: value}} of the TensorBoard scalars written in `workdir`."""
  scalars = {}
  for path in sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.HasField('tensor') and not value.tensor.tensor_shape.dim:
          number = float(tf.make_ndarray(value.tensor))
        elif value.HasField('simple_value'):
          number = value.simple_value
        else:
          continue
        scalars.setdefault(value.tag, {})[event.step] = number
  return scalars
