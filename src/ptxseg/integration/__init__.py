"""Talking to a PACS: DICOMweb (QIDO/WADO/STOW) and DIMSE (C-STORE), results back as SEG and SR.

- `analysis`: DICOM instances in, findings plus the SEG and SR datasets out; result UIDs that are
  the same on every rerun; log lines without patient identifiers.
- `dicomweb`: `ptxseg dicomweb` (find chest radiographs without a result, retrieve, store back).
- `spool`: the listener's folders on disk (received, outbox, failed), durable before acknowledged.
- `dimse`: `ptxseg listen` (a C-STORE receiver over the spool that forwards SEG and SR).
- `status`: `ptxseg listen-status` (what a spool holds, without a model or a destination).
"""
