"""Uncertainty of reported numbers: patient-level bootstrap, Wilson and DeLong, Holm, calibration.

The lowest layer: numpy, scipy and scikit-learn only, so that evaluation, the model files and the
benchmarks can all use it. `bootstrap` resamples patients with NumPy index arrays (no Python loop
over resamples), `intervals` holds the closed-form methods and the multiple-testing correction,
`calibration` turns a raw image-level score into a probability and measures how well it is one.
"""
