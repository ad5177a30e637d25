"""Receive one uploaded X-ray for the web service: size limit, content sniffing, readable errors.

The body is read in memory and counted while it arrives, so an oversized upload is refused before
it is complete and nothing is written to disk. The file type is decided from the content (DICOM
`DICM` marker at byte 128, PNG and JPEG signatures), never from the file name.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the file in a form upload
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
MEDIA_TYPES = {"dicom": "application/dicom", "png": "image/png", "jpeg": "image/jpeg"}
SUFFIXES = {"dicom": ".dcm", "png": ".png", "jpeg": ".jpg"}


class UploadError(Exception):
    """An upload the service refuses; `status` is the HTTP status, `code` a stable short name."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Upload:
    """The bytes of one uploaded file, its sniffed kind and a content hash for the logs."""

    data: bytes
    kind: str  # "dicom" | "png" | "jpeg"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def suffix(self) -> str:
        return SUFFIXES[self.kind]


def sniff_kind(data: bytes) -> str | None:
    """The file type from its first bytes: "dicom", "png", "jpeg", or None for anything else."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    return None


def _human_size(n: int) -> str:
    return f"{n / 2**20:.4g} MB" if n >= 2**20 else f"{n / 2**10:.4g} KB"


def _too_large(limit: int) -> UploadError:
    return UploadError(
        413,
        "upload_too_large",
        f"The file is larger than this server's upload limit of {_human_size(limit)}. "
        "Send a single chest X-ray (DICOM, PNG or JPEG) or ask the administrator to raise "
        "--max-upload-mb.",
    )


def _unsupported(what: str) -> UploadError:
    return UploadError(
        415,
        "unsupported_type",
        f"{what} is not a DICOM, PNG or JPEG file. Upload a chest X-ray as a DICOM Part 10 file "
        "(with the 'DICM' marker at byte 128), a PNG or a JPEG.",
    )


async def _counted(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body chunk by chunk; raises 413 as soon as more than `limit` bytes arrived."""
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)
        yield chunk


class _InMemoryParser(MultiPartParser):
    """Starlette's multipart parser, keeping file parts in memory (the body is already bounded)."""

    spool_max_size = 2**62


async def read_upload(request: Request, max_bytes: int) -> Upload:
    """Read the uploaded file from a multipart form (field `file`) or a raw request body."""
    content_type = request.headers.get("content-type", "")
    is_form = content_type.startswith("multipart/form-data")
    body_limit = max_bytes + (MULTIPART_OVERHEAD if is_form else 0)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        raise _too_large(max_bytes)
    try:
        if is_form:
            data = await _read_form_file(request, body_limit)
        else:
            data = b"".join([chunk async for chunk in _counted(request, body_limit)])
    except UploadError as err:
        if err.status == 413:
            raise _too_large(max_bytes) from None
        raise
    except ClientDisconnect:
        raise UploadError(
            400,
            "client_disconnected",
            "The connection closed before the upload was complete. Send the file again.",
        ) from None
    if len(data) > max_bytes:
        raise _too_large(max_bytes)
    if not data:
        raise UploadError(
            422, "empty_upload", "The upload is empty. Choose a chest X-ray file and send it again."
        )
    kind = sniff_kind(data)
    if kind is None:
        raise _unsupported("The uploaded file")
    return Upload(data=data, kind=kind)


async def _read_form_file(request: Request, body_limit: int) -> bytes:
    parser = _InMemoryParser(
        request.headers, _counted(request, body_limit), max_files=1, max_fields=10
    )
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise UploadError(
            400,
            "bad_form",
            f"The form upload could not be read ({err}). Send the image as the form field 'file'.",
        ) from None
    try:
        part = form.get("file")
        if part is None or isinstance(part, str):
            raise UploadError(
                422,
                "missing_file",
                "No file in the upload: send the chest X-ray as the multipart form field 'file'.",
            )
        await part.seek(0)
        return await part.read()
    finally:
        await form.close()
