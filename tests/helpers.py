"""Shared helpers for the tests: tiny model configs that run in milliseconds."""

import ml_collections


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
