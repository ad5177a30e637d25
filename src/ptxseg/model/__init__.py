"""The model layer: the U-Net factory, losses, metric formulas, operating point and checkpoints."""
