"""Experiments that train and evaluate many models into one folder: cross-validation (`ptxseg cv`)
and the ablation grid (`ptxseg ablate`), on one resumable job list (`jobs.py`)."""
