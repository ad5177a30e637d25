"""`ptxseg dicomweb`: chest radiographs from a DICOMweb PACS in, SEG and SR back (dicomweb-client).

One pass: QIDO-RS lists the studies (given, or every study with CR or DX images), then each
study's instances; a CR/DX instance is *pending* when the study holds no instance with the UID that
this model's SR of it would have (`Analyzer.report_uid`: derived from the source image, the ptxseg
version, the model digest and the operating point). Pending instances are retrieved (WADO-RS),
segmented, and their SEG (positives) and SR (every image) stored (STOW-RS), SR last: an image whose
SR is stored is done, so a rerun stores nothing new, and an interrupted run resumes.

A STOW answer lists what the PACS stored; anything missing from it (Orthanc answers 200 with an
empty list for files it refuses) is an error that names the object, the HTTP status and the
PACS's reason.

A lost connection (the PACS stops, the network goes, the server answers 502/503/504) ends the
pass with `ConnectionLost`: the command says so in one line and exits 1, and a rerun finishes the
work, since images whose SR is stored are skipped.

Credentials come from the environment only, never from the command line (where `ps` and shell
histories show them): `PTXSEG_DICOMWEB_TOKEN` (sent as a bearer token), or
`PTXSEG_DICOMWEB_USER` and `PTXSEG_DICOMWEB_PASSWORD` (HTTP basic authentication). A URL with a
user name or password in it is refused, and `Secrets.scrub` removes the values of these variables
from every line ptxseg prints, should a server quote them back.
"""

from __future__ import annotations

import base64
import logging
import os
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ptxseg.data.uids import is_valid_uid
from ptxseg.integration.analysis import (
    CHEST_RADIOGRAPH_MODALITIES,
    Analyzer,
    ImageFailure,
    dataset_to_bytes,
    describe,
    image_ref,
)

log = logging.getLogger("ptxseg.integration.dicomweb")

PAGE_SIZE = 1000
TOKEN_ENV = "PTXSEG_DICOMWEB_TOKEN"
USER_ENV = "PTXSEG_DICOMWEB_USER"
PASSWORD_ENV = "PTXSEG_DICOMWEB_PASSWORD"
TAG = {
    "StudyInstanceUID": "0020000D",
    "SeriesInstanceUID": "0020000E",
    "SOPInstanceUID": "00080018",
    "Modality": "00080060",
}


class DicomwebError(RuntimeError):
    """The server cannot be used as configured (unreachable, credentials, bad answer)."""


class ConnectionLost(DicomwebError):
    """The server stopped answering (connection refused or reset, timeout, 502/503/504)."""


class StoreRefused(RuntimeError):
    """The PACS did not store an object ptxseg sent; the message says which and why."""


SECRET_HINT = f"set {TOKEN_ENV}, or {USER_ENV} and {PASSWORD_ENV}"
UNAVAILABLE = (502, 503, 504)


class Secrets:
    """The credential values in the environment, to be removed from any text ptxseg prints."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        token, user, password = (env.get(k) or "" for k in (TOKEN_ENV, USER_ENV, PASSWORD_ENV))
        values = [token, password]
        if user and password:  # what HTTP basic authentication sends
            values.append(base64.b64encode(f"{user}:{password}".encode()).decode())
        self.values = sorted({v for v in values if len(v) >= 3}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, "<secret>")
        return text


def check_url(url: str) -> str:
    """The DICOMweb root as given; DicomwebError (that never repeats a secret) when it is not
    http(s)://host[:port]/path, or carries a user name, password, query or fragment."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise DicomwebError(
            "--url: not a valid URL; expected http://host:port/path, e.g. "
            "http://127.0.0.1:8042/dicom-web"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = public_url(url) if any(c in url for c in "@?#") else url
        raise DicomwebError(
            f"--url {shown}: expected http://... or https://... (the DICOMweb root)"
        )
    if "@" in parts.netloc:
        raise DicomwebError(
            f"--url: a user name or password in the URL is refused (it would show in `ps`, "
            f"shell histories and logs); {SECRET_HINT}, and give the URL without them, e.g. "
            f"{public_url(url)}"
        )
    if parts.query or parts.fragment:
        raise DicomwebError(
            f"--url {public_url(url)}?...: a DICOMweb root has no query string or fragment "
            f"(ptxseg appends /studies...); for a token, set {TOKEN_ENV}"
        )
    return url


def public_url(url: str) -> str:
    """The URL without user information, query or fragment: safe to print."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def auth_session(environ: Mapping[str, str] | None = None):
    """A requests session with the credentials from the environment, or None without any."""
    import requests

    env = os.environ if environ is None else environ
    token, user = env.get(TOKEN_ENV), env.get(USER_ENV)
    if token and user:
        raise DicomwebError(
            f"both {TOKEN_ENV} and {USER_ENV} are set: use a token or a user and password, not both"
        )
    if user and PASSWORD_ENV not in env:
        raise DicomwebError(f"{USER_ENV} is set but {PASSWORD_ENV} is not: set both")
    if not (token or user):
        return None
    session = requests.Session()
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    else:
        session.auth = (user, env[PASSWORD_ENV])
    return session


def make_client(
    url: str, environ: Mapping[str, str] | None = None, timeout: float = 60.0, attempts: int = 3
):
    """A DICOMwebClient for `url` (the service root, e.g. http://host:8042/dicom-web).

    A request that fails to connect or gets 429/503/504 is tried `attempts` times in all, with
    exponential back-off (2 s, 4 s, ...)."""
    from dicomweb_client.api import DICOMwebClient

    check_url(url)
    client = DICOMwebClient(url=url.rstrip("/"), session=auth_session(environ), timeout=timeout)
    client.set_http_retry_params(retry=attempts > 1, max_attempts=max(1, attempts))
    return client


def value(item: dict[str, Any], keyword: str) -> str | None:
    """A single value from a DICOM JSON object (QIDO answer) by keyword."""
    element = item.get(TAG[keyword]) or {}
    values = element.get("Value") or [None]
    return None if values[0] is None else str(values[0])


@dataclass(frozen=True)
class InstanceRef:
    study: str
    series: str
    sop: str

    @property
    def ref(self) -> str:
        return image_ref(self.sop)


@dataclass
class PassSummary:
    """What one pass found and did; `errors` are log lines without patient identifiers."""

    studies: int = 0
    radiographs: int = 0
    done_before: int = 0
    analysed: int = 0
    positives: int = 0
    stored: dict[str, int] = field(default_factory=lambda: {"SEG": 0, "SR": 0})
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        rate = self.analysed / self.seconds if self.seconds > 0 and self.analysed else 0.0
        return (
            f"{self.studies} studies, {self.radiographs} CR/DX images: {self.done_before} had a "
            f"result, {self.analysed} analysed ({self.positives} positive), stored "
            f"{self.stored['SEG']} SEG + {self.stored['SR']} SR, {len(self.errors)} errors, "
            f"{self.seconds:.1f} s ({rate:.2f} images/s)"
        )


def lost(what: str, err: BaseException) -> ConnectionLost:
    return ConnectionLost(
        f"{what}: cannot reach the DICOMweb server ({err.__class__.__name__}); check --url "
        "and that the server is running"
    )


def call(what: str, function: Callable, *args, **kwargs):
    """Call the client, turning connection and HTTP failures into a `DicomwebError` message
    (`ConnectionLost` when the server is gone or unavailable)."""
    import requests

    try:
        return function(*args, **kwargs)
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
            requests.exceptions.RetryError) as err:  # fmt: skip
        raise lost(what, err) from None
    except requests.HTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        hint = ""
        if status in (401, 403):
            hint = f"; the server wants credentials: {SECRET_HINT}"
        kind = ConnectionLost if status in UNAVAILABLE else DicomwebError
        raise kind(f"{what}: HTTP {status} {reason(err)}{hint}") from None
    except requests.RequestException as err:
        raise DicomwebError(f"{what}: {err.__class__.__name__}: {err}") from None


def reason(err) -> str:
    """The server's own words for an HTTP error (Orthanc sends JSON with 'Details')."""
    response = getattr(err, "response", None)
    if response is None:
        return str(err)
    try:
        body = response.json()
        text = body.get("Details") or body.get("Message") or str(body)
    except ValueError:
        text = (response.text or "").strip()
    text = Secrets().scrub(text)  # before cutting: a cut secret would no longer be found
    return f"{response.reason or ''}: {text[:300]}".strip(": ")


def paged(what: str, search: Callable, keyword: str, **kwargs) -> list[dict[str, Any]]:
    """All answers of a QIDO search, page by page (`limit`/`offset`), each UID once.

    Paging stops at the first page that brings no new UID: servers that cap an answer are
    followed to the end, and servers that ignore `offset` (Orthanc does, with some filters)
    do not loop forever.
    """
    results: list[dict[str, Any]] = []
    seen: set[str | None] = set()
    offset = 0
    while True:
        page = call(what, search, limit=PAGE_SIZE, offset=offset, **kwargs)
        fresh = [item for item in page if value(item, keyword) not in seen]
        if not fresh:
            return results
        seen.update(value(item, keyword) for item in fresh)
        results += fresh
        offset += len(page)


def find_studies(client, studies: Sequence[str] | None) -> list[str]:
    """The given studies, or every study that QIDO lists with CR or DX images."""
    if studies:
        return list(dict.fromkeys(studies))
    found: dict[str, None] = {}
    for modality in CHEST_RADIOGRAPH_MODALITIES:
        answer = paged(
            "QIDO-RS studies",
            client.search_for_studies,
            "StudyInstanceUID",
            search_filters={"ModalitiesInStudy": modality},
        )
        for item in answer:
            uid = value(item, "StudyInstanceUID")
            if uid:
                found[uid] = None
    return list(found)


def study_instances(client, study: str) -> list[dict[str, Any]]:
    return paged(
        f"QIDO-RS instances of study {image_ref(study, 'study')}",
        client.search_for_instances,
        "SOPInstanceUID",
        study_instance_uid=study,
        fields=["Modality", "SeriesInstanceUID"],
    )


def pending_instances(client, study: str, analyzer: Analyzer) -> tuple[list[InstanceRef], int]:
    """(the CR/DX instances of `study` without this analyzer's SR, how many already have one)."""
    instances = study_instances(client, study)
    present = {value(item, "SOPInstanceUID") for item in instances}
    pending, done = [], 0
    for item in instances:
        modality = (value(item, "Modality") or "").upper()
        sop, series = value(item, "SOPInstanceUID"), value(item, "SeriesInstanceUID")
        if modality not in CHEST_RADIOGRAPH_MODALITIES or not (sop and series):
            continue
        if analyzer.report_uid(sop) in present:
            done += 1
        else:
            pending.append(InstanceRef(study, series, sop))
    return pending, done


def store(client, datasets: Sequence, ref: str) -> list[str]:
    """STOW-RS the datasets; their modalities when the PACS stored all, else `StoreRefused`."""
    import requests

    kinds = [str(ds.Modality) for ds in datasets]
    label = f"{ref}: {' + '.join(kinds)}"
    try:
        answer = client.store_instances(list(datasets))
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
            requests.exceptions.RetryError) as err:  # fmt: skip
        raise lost(f"STOW-RS {label}", err) from None
    except requests.HTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        if status in UNAVAILABLE:
            raise ConnectionLost(f"STOW-RS {label}: HTTP {status} {reason(err)}") from None
        raise StoreRefused(
            f"{label}: the PACS refused the upload (HTTP {status} {reason(err)}); "
            f"nothing was stored for this image.{uid_hint(datasets)}"
        ) from None
    stored = {
        str(item.ReferencedSOPInstanceUID) for item in answer.get("ReferencedSOPSequence", [])
    }
    failed = {
        str(item.ReferencedSOPInstanceUID): item.get("FailureReason")
        for item in answer.get("FailedSOPSequence", [])
    }
    missing = [ds for ds in datasets if str(ds.SOPInstanceUID) not in stored]
    if missing:
        details = ", ".join(missing_detail(ds, failed) for ds in missing)
        raise StoreRefused(
            f"{label}: the PACS answered but did not store {details}.{uid_hint(missing)} "
            "A rerun tries this image again."
        )
    return kinds


def missing_detail(ds, failed: dict[str, Any]) -> str:
    code = failed.get(str(ds.SOPInstanceUID))
    why = f"failure reason {int(code):#06x}" if code is not None else "not listed as stored"
    return f"{ds.Modality} ({why})"


def uid_hint(datasets: Iterable) -> str:
    bad = [
        keyword
        for ds in datasets
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
        if not is_valid_uid(ds.get(keyword))
    ]
    if not bad:
        return ""
    return (
        f" The object has missing or invalid {', '.join(dict.fromkeys(bad))}, which PACSs refuse; "
        "`ptxseg repair-uids` writes copies with valid UIDs."
    )


def retrieve(client, instance: InstanceRef) -> bytes:
    ds = call(
        f"WADO-RS {instance.ref}",
        client.retrieve_instance,
        instance.study,
        instance.series,
        instance.sop,
    )
    return dataset_to_bytes(ds)


def batches(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) >= max(1, size):
            yield batch
            batch = []
    if batch:
        yield batch


def all_pending(client, analyzer: Analyzer, studies: Sequence[str] | None, summary: PassSummary):
    """The pending instances of every study, one study's QIDO at a time (counted in summary)."""
    for study in find_studies(client, studies):
        summary.studies += 1
        pending, done = pending_instances(client, study, analyzer)
        summary.radiographs += len(pending) + done
        summary.done_before += done
        yield from pending


def run_pass(
    client,
    analyzer: Analyzer,
    studies: Sequence[str] | None = None,
    batch_size: int = 4,
    report: Callable[[str], None] = log.info,
) -> PassSummary:
    """One pass over the studies: analyse every pending CR/DX image and store its results.

    Images are segmented in batches of `batch_size` across studies. `ConnectionLost` ends the
    pass (carrying the summary so far as `.summary`): what was stored stays, and a rerun goes on.
    """
    start = time.perf_counter()
    summary = PassSummary()
    try:
        _run_batches(client, analyzer, studies, batch_size, report, summary)
    except ConnectionLost as err:
        summary.seconds = time.perf_counter() - start
        err.summary = summary
        raise
    summary.seconds = time.perf_counter() - start
    return summary


def _run_batches(client, analyzer, studies, batch_size, report, summary: PassSummary) -> None:
    for batch in batches(all_pending(client, analyzer, studies, summary), batch_size):
        blobs = []
        for instance in batch:
            try:
                blobs.append(retrieve(client, instance))
            except ConnectionLost:
                raise
            except DicomwebError as err:
                summary.errors.append(f"{instance.ref}: {err}")
                report(summary.errors[-1])
        for outcome in analyzer.analyse(blobs):
            if isinstance(outcome, ImageFailure):
                summary.errors.append(describe(outcome))
                report(summary.errors[-1])
                continue
            summary.analysed += 1
            summary.positives += bool(outcome.findings["pneumothorax"])
            try:
                for kind in store(client, outcome.outputs, outcome.ref):
                    summary.stored[kind] += 1
            except ConnectionLost:
                raise
            except (StoreRefused, DicomwebError) as err:
                summary.errors.append(str(err))
                report(summary.errors[-1])
                continue
            report(describe(outcome))


def watch(
    client,
    analyzer: Analyzer,
    studies: Sequence[str] | None,
    interval: float,
    batch_size: int = 4,
    report: Callable[[str], None] = log.info,
    should_stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> list[PassSummary]:
    """Run passes every `interval` seconds until `should_stop()`; a failed pass is reported and
    the next one tries again (a PACS restarting must not end the watch)."""
    summaries = []
    while not should_stop():
        try:
            summaries.append(run_pass(client, analyzer, studies, batch_size, report))
            report(summaries[-1].line())
        except DicomwebError as err:
            report(f"pass failed: {err}; trying again in {interval:g} s")
        if should_stop():
            break
        sleep(interval)
    return summaries


def process(
    client,
    url: str,
    analyzer: Analyzer,
    studies: Sequence[str] | None,
    batch_size: int,
    report: Callable[[str], None],
    every: float | None = None,
    stop=None,
) -> int:
    """`ptxseg dicomweb` after its options: one pass over `url`, or with `every` (`--watch`)
    passes that many seconds apart until `stop` (a `threading.Event`) is set. Returns the exit
    code: 0 done, 1 when images failed or the server was lost (a rerun finishes), 2 for another
    DICOMweb error."""
    predictor = analyzer.predictor
    op, tta = predictor.operating_point.describe(), predictor.tta
    name = predictor.operating_point_name
    report(f"{public_url(url)}: {analyzer.model_name}, operating point {name}: {op}, TTA {tta}")
    if predictor.path_choice:  # None for a Predictor built without the choice
        report(f"path: {predictor.path_choice['line']}")
    if every is not None:
        watch(client, analyzer, studies, every, batch_size, report, stop.is_set, stop.wait)
        return 0
    try:
        summary = run_pass(client, analyzer, studies, batch_size, report=report)
    except ConnectionLost as err:
        done = getattr(err, "summary", None)
        stored = done.stored["SR"] if done is not None else 0
        report(
            f"error: {err}. Results of {stored} images were stored before; run the same command "
            "again to finish (images that have a result are skipped)"
        )
        return 1
    except DicomwebError as err:
        report(f"error: {err}")
        return 2
    report(summary.line())
    return 1 if summary.errors else 0
