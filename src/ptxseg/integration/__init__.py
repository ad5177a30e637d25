"""Talking to a PACS: DICOMweb (QIDO/WADO/STOW) and DIMSE (C-STORE), results back as SEG and SR.

- `analysis`: DICOM instances in, findings plus the SEG and SR datasets out; result UIDs that are
  the same on every rerun; log lines without patient identifiers.
- `dicomweb`: `ptxseg dicomweb` (find chest radiographs without a result, retrieve, store back).
- `dimse`: `ptxseg listen` (a C-STORE receiver that forwards SEG and SR to a destination).
"""
