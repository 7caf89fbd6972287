"""vit_flax: Vision Transformers in JAX/Flax, compatible with vit_jax.

Importing it imports no TensorFlow: only the host input pipeline needs it
(see `vit_flax.data.tensorflow_loader`).
"""
