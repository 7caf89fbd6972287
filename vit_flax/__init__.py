"""vit_flax: Vision Transformers in JAX/Flax, compatible with vit_jax."""
