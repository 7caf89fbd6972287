"""Measuring tools: the train-step benchmark, the comparison with timm and
vit_jax, and the per-op step profile."""
