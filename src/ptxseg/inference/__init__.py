"""Inference: the Predictor (the one image -> probability -> mask path) and what it writes."""
