"""Keep a test server off the network, whatever address it binds: run it in a private network
namespace whose only interface is loopback, and reach it through relays on 127.0.0.1.

Debian's Orthanc 1.10 has no bind-address setting: it listens on 0.0.0.0 for HTTP and DICOM.
`Namespace` starts it under `unshare --net --map-root-user` (an unprivileged user and network
namespace), so its 0.0.0.0 is the namespace's own loopback and nothing outside can connect. The
test reaches it through relays: 127.0.0.1:PORT here -> a Unix socket (files cross namespaces) ->
127.0.0.1:PORT inside. Ports the server must call out to (a DICOM modality it pushes to) are
relayed the other way. Inside, the server sees its peers at 127.0.0.1.

This file is also the program that runs inside the namespace (`python loopback.py --sockets DIR
--expose 8042,4242 --reach 11112 -- Orthanc config.json`); it uses the standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


@functools.cache
def namespaces_work() -> bool:
    """Whether this machine lets an unprivileged user make a network namespace."""
    if shutil.which("unshare") is None:
        return False
    try:
        done = subprocess.run(
            ["unshare", "--net", "--map-root-user", sys.executable, __file__, "--probe"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def loopback_up() -> None:
    """Bring `lo` up (a new network namespace starts with it down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def tcp_listener(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    return sock


def unix_listener(path: Path) -> socket.socket:
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(64)
    return sock


def tcp_to(port: int) -> Callable[[], socket.socket]:
    return lambda: socket.create_connection(("127.0.0.1", port), timeout=30)


def unix_to(path: Path) -> Callable[[], socket.socket]:
    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
        except OSError:
            sock.close()
            raise
        return sock

    return connect


class Relay:
    """Accept on `listener`, connect with `connect`, copy bytes both ways until either side
    closes. `close()` stops accepting and cuts the open connections (a server going away)."""

    def __init__(self, listener: socket.socket, connect: Callable[[], socket.socket]):
        self.listener, self.connect = listener, connect
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = self.connect()
            except OSError:
                client.close()  # nothing behind: the caller sees the connection closed
                continue
            upstream.settimeout(None)
            with self.lock:
                self.open.update((client, upstream))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pump, args=(source, target), daemon=True).start()

    def pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self.lock:
            for sock in self.open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self.open.clear()


class Namespace:
    """`command` in its own network namespace; `expose` ports reachable at 127.0.0.1 here,
    `reach` ports (here, on 127.0.0.1) reachable from inside at the same numbers."""

    def __init__(self, command: list[str], expose: list[int], reach: list[int], log: Path):
        self.command, self.expose, self.reach, self.log = command, expose, reach, log
        self.process: subprocess.Popen | None = None
        self.relays: list[Relay] = []
        self.sockets: Path | None = None

    def start(self) -> Namespace:
        # Unix socket paths are limited to 108 bytes: a short folder, not pytest's tmp_path
        self.sockets = Path(tempfile.mkdtemp(prefix="ptx-ns-"))
        self.relays = [
            Relay(unix_listener(self.sockets / f"out-{port}.sock"), tcp_to(port))
            for port in self.reach
        ]
        inside = [sys.executable, __file__, "--sockets", str(self.sockets),
                  "--expose", ",".join(map(str, self.expose)),
                  "--reach", ",".join(map(str, self.reach)), "--", *self.command]  # fmt: skip
        with open(self.log, "ab") as sink:
            self.process = subprocess.Popen(
                ["unshare", "--net", "--map-root-user", *inside],
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        ready = [self.sockets / f"in-{port}.sock" for port in self.expose]
        deadline = time.monotonic() + 30
        while not all(path.exists() for path in ready):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the namespace did not start: see {self.log}")
            time.sleep(0.05)
        self.relays += [
            Relay(tcp_listener(port), unix_to(self.sockets / f"in-{port}.sock"))
            for port in self.expose
        ]
        return self

    def poll(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def stop(self, timeout: float = 20) -> None:
        for relay in self.relays:
            relay.close()
        self.relays = []
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.sockets is not None:
            shutil.rmtree(self.sockets, ignore_errors=True)


def inside(args: argparse.Namespace) -> int:
    """In the namespace: loopback up, relays to and from the Unix sockets, then the command."""
    loopback_up()
    folder = Path(args.sockets)
    ports = lambda text: [int(p) for p in text.split(",") if p]  # noqa: E731
    for port in ports(args.reach):
        Relay(tcp_listener(port), unix_to(folder / f"out-{port}.sock"))
    child = subprocess.Popen(args.command)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    for port in ports(args.expose):  # last: the outside waits for these files
        Relay(unix_listener(folder / f"in-{port}.sock"), tcp_to(port))
    return child.wait()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", action="store_true", help="bring lo up and exit")
    parser.add_argument("--sockets", default="")
    parser.add_argument("--expose", default="")
    parser.add_argument("--reach", default="")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.probe:
        loopback_up()
        return 0
    args.command = args.command[1:] if args.command[:1] == ["--"] else args.command
    return inside(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
