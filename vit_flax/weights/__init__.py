"""Weights in other formats: the official `.npz` checkpoints (and their
adaptation for fine-tuning), timm and Hugging Face ViT / DeiT weights."""
