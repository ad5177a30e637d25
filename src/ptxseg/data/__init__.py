"""The data layer: SIIM DICOMs, RLE and CSVs -> manifest, split, cached arrays; synthetic data."""
