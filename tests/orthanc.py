"""A real Orthanc for the `pacs` tests: Debian's `orthanc` + `orthanc-dicomweb` packages
(scripts/install-orthanc.sh), with a temporary configuration and storage folder on free ports,
basic authentication, and stopped after the test.

Locked down as docs/pacs.md says a PACS beside ptxseg should be: DIMSE only from the registered
modalities (`modalities`), checked by AE title and by address 127.0.0.1 (DicomAlwaysAllowStore and
DicomAlwaysAllowEcho false, DicomCheckModalityHost true), and HTTP remote access off.

Orthanc 1.10 has no bind-address setting and listens on 0.0.0.0. Where the machine allows
unprivileged namespaces (`loopback.namespaces_work()`), each Orthanc runs in its own network
namespace and is reachable only at 127.0.0.1 through `loopback`'s relays (`isolated` is True);
elsewhere it runs plainly, its ports open on every interface but refusing what the settings above
refuse, and a warning says so.
"""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from loopback import Namespace, namespaces_work
from pacs_helpers import free_port

USER, PASSWORD = "ptxseg", "test-secret"
PLUGIN_GLOBS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so*",
    "/usr/lib/orthanc/plugins/libOrthancDicomWeb.so*",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so*",
)


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).is_file()), None
    )


def dicomweb_plugin() -> str | None:
    return next((hit for pattern in PLUGIN_GLOBS for hit in sorted(glob.glob(pattern))), None)


@dataclass
class Orthanc:
    root: str
    dicom_port: int
    aet: str = "ORTHANC"
    auth: tuple[str, str] = (USER, PASSWORD)
    process: subprocess.Popen | Namespace | None = None
    log: Path | None = None
    modalities: dict = field(default_factory=dict)
    folder: Path | None = None
    http_port: int = 0
    isolated: bool = False

    @property
    def dicomweb(self) -> str:
        return f"{self.root}/dicom-web"

    @property
    def env(self) -> dict[str, str]:
        return {"PTXSEG_DICOMWEB_USER": USER, "PTXSEG_DICOMWEB_PASSWORD": PASSWORD}

    def get(self, path: str):
        answer = requests.get(f"{self.root}{path}", auth=self.auth, timeout=30)
        answer.raise_for_status()
        return answer

    def post(self, path: str, data):
        answer = requests.post(f"{self.root}{path}", data=data, auth=self.auth, timeout=60)
        answer.raise_for_status()
        return answer.json()

    def upload(self, path: Path) -> str:
        """Store a file through the REST API; its Orthanc instance id."""
        return self.post("/instances", path.read_bytes())["ID"]

    def instance_ids(self) -> list[str]:
        return self.get("/instances").json()

    def tags(self, instance_id: str) -> dict:
        return self.get(f"/instances/{instance_id}/simplified-tags").json()

    def file(self, instance_id: str) -> bytes:
        return self.get(f"/instances/{instance_id}/file").content

    def by_modality(self, modality: str) -> dict[str, bytes]:
        """Orthanc id -> DICOM file of every stored instance of that modality."""
        return {
            i: self.file(i) for i in self.instance_ids() if self.tags(i).get("Modality") == modality
        }

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log else ""


def orthanc_config(folder: Path, http_port: int, dicom_port: int, modalities: dict) -> dict:
    """The test Orthanc's configuration: see the module docstring for what it locks down."""
    return {
        "Name": "ptxseg-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [dicomweb_plugin()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomModalities": modalities,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowEcho": False,
        "DicomCheckModalityHost": True,
        "StableAge": 1,
        "HttpTimeout": 30,
    }


def start_orthanc(
    folder: Path,
    modalities: dict | None = None,
    http_port: int | None = None,
    dicom_port: int | None = None,
) -> Orthanc:
    """Start Orthanc with its storage in `folder`; skip the test when it is not installed.

    `modalities` maps a name to [AET, "127.0.0.1", port]: the only peers whose C-STORE and
    C-ECHO it accepts, and where it pushes. Given ports are reused (a restart, same addresses)."""
    binary, plugin = orthanc_binary(), dicomweb_plugin()
    if binary is None or plugin is None:
        missing = "the Orthanc binary" if binary is None else "Orthanc's DICOMweb plugin"
        pytest.skip(
            f"{missing} is not installed: run scripts/install-orthanc.sh "
            "(Debian packages orthanc and orthanc-dicomweb), or `make test-pacs`"
        )
    modalities = modalities or {}
    http_port, dicom_port = http_port or free_port(), dicom_port or free_port()
    config = orthanc_config(folder, http_port, dicom_port, modalities)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    log = folder / "orthanc.log"
    isolated = namespaces_work()
    if isolated:
        reach = [int(entry[2]) for entry in modalities.values()]
        process = Namespace([binary, str(path)], [http_port, dicom_port], reach, log).start()
    else:
        warnings.warn(
            "no unprivileged network namespaces here: the test Orthanc listens on every "
            "interface (Orthanc 1.10 has no bind-address setting); it refuses HTTP from other "
            "hosts and DIMSE from unregistered peers",
            stacklevel=2,
        )
        with open(log, "ab") as sink:
            process = subprocess.Popen([binary, str(path)], stdout=sink, stderr=subprocess.STDOUT)
    server = Orthanc(
        f"http://127.0.0.1:{http_port}",
        dicom_port,
        process=process,
        log=log,
        modalities=modalities,
        folder=folder,
        http_port=http_port,
        isolated=isolated,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}:\n{server.log_tail()}")
        try:
            server.get("/system")
            return server
        except requests.RequestException:
            time.sleep(0.2)
    stop_orthanc(server)
    raise RuntimeError(f"Orthanc did not answer within 60 s:\n{server.log_tail()}")


def restart_orthanc(server: Orthanc) -> Orthanc:
    """Start a stopped Orthanc again: same storage, same ports, same modalities."""
    return start_orthanc(server.folder, server.modalities, server.http_port, server.dicom_port)


def stop_orthanc(server: Orthanc) -> None:
    if isinstance(server.process, Namespace):
        server.process.stop()
        return
    if server.process is None or server.process.poll() is not None:
        return
    server.process.terminate()
    try:
        server.process.wait(20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(10)
