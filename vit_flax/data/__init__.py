"""Data: sources (TFDS, image folders, IDX, arrays), the host input pipeline,
the data on the devices (device.py, device_augment.py), resolution curricula,
RandAugment and mixup / CutMix."""
