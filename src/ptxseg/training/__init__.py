"""Training: augmentation, the Lightning module and data module, and `fit`."""
