"""vit_flax: Vision Transformers in JAX/Flax, compatible with vit_jax."""

import os

# TensorFlow's C++ start-up INFO lines (oneDNN notes) tell users nothing to
# act on; TF_CPP_MIN_LOG_LEVEL=0 in the environment brings them back.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
