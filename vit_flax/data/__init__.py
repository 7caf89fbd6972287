"""Data: sources (TFDS, image folders, IDX, arrays), the host input pipeline,
resolution curricula, RandAugment and mixup / CutMix."""
