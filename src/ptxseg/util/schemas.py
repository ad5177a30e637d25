"""The versions of ptxseg's JSON outputs (docs/reference/schemas.md describes each one).

Every writer puts its schema's number in the document as `schema_version`. The number goes up
when a field is removed or renamed, or its meaning changes; adding a field keeps it, so a reader
that knows version N reads every document of version N.
"""

EVALUATION_SUMMARY = 1
"""`summary.json` of `evaluate` (and of the out-of-fold evaluation of `cv`)."""

PREDICT_RUN = 1
"""`run.json` of `predict`."""

FINDINGS = 1
"""The findings of one image: `findings/<image>.json` of `predict`, and `serve`'s answer."""

TRAIN_SUMMARY = 1
"""`train_summary.json` of `train`."""
