"""Evaluation through the Predictor, operating-point search and ablation grids."""
