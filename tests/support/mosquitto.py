"""A private Mosquitto broker per test.

Tests that kill, restart or overload a broker must never touch the shared one on port 1883:
other suites (and people) use it at the same time. ``PrivateMosquitto`` runs Debian's
``mosquitto`` binary on a free loopback port with its own configuration, log and persistence
directory, and only ever signals the process it started itself.

Persistence is on by default so that SIGTERM followed by ``restart()`` keeps sessions and
queued messages (Mosquitto writes its database on a clean exit); SIGKILL loses whatever
changed since the last autosave, as in production.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import secrets
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import pytest

MOSQUITTO = "/usr/sbin/mosquitto"
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on the loopback interface that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def write_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """Write a Mosquitto 2.0 password file (``$6$`` salted SHA-512 entries).

    The format is the one ``mosquitto_passwd`` writes: base64 salt and base64
    SHA-512(password + salt); computing it here avoids depending on that tool.
    """
    lines = []
    for user, password in users.items():
        salt = secrets.token_bytes(12)
        digest = hashlib.sha512(password.encode() + salt).digest()
        salt_b64 = base64.b64encode(salt).decode()
        lines.append(f"{user}:$6${salt_b64}${base64.b64encode(digest).decode()}\n")
    path.write_text("".join(lines), encoding="utf-8")
    path.chmod(0o600)
    return path


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _port_accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


class PrivateMosquitto:
    """One Mosquitto process owned by a test, on 127.0.0.1 and a port of its own.

    ``directory`` receives ``mosquitto.conf``, ``mosquitto.log`` and the persistence
    database; ``restart()`` reuses all three and the port. ``verbose`` logs every packet
    (PUBLISH and PUBACK ids included), ``extra_config`` is appended after the listener line
    (TLS files, ``max_packet_size``...). The binary missing skips the
    test rather than failing it, since the suite also runs where Mosquitto is not installed.
    """

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        persistence: bool = True,
        autosave_interval: int = 30,
        max_queued_messages: int = 1_000_000,
        max_inflight_messages: int = 500,
        password_file: Path | None = None,
        users: Mapping[str, str] | None = None,
        extra_config: str = "",
        verbose: bool = False,
        binary: str = MOSQUITTO,
    ) -> None:
        if not (Path(binary).is_file() and os.access(binary, os.X_OK)):
            pytest.skip(f"the mosquitto broker is not installed ({binary} missing)")
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self._fixed_port = port is not None
        self._port = port if port is not None else free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        if users is not None:
            password_file = write_password_file(directory / "passwords", users)
        self.persistence_dir = directory / "persistence"
        self.persistence_dir.mkdir(exist_ok=True)
        self.log_path = directory / "mosquitto.log"
        self.config_path = directory / "mosquitto.conf"
        self._settings = {
            "persistence": persistence,
            "autosave_interval": autosave_interval,
            "max_queued_messages": max_queued_messages,
            "max_inflight_messages": max_inflight_messages,
            "password_file": password_file,
            "extra_config": extra_config,
            "verbose": verbose,
        }

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs, else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    def log_text(self) -> str:
        """The broker's log so far (for assertion messages and debugging)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _write_config(self) -> None:
        s = self._settings
        # Running as root, Mosquitto would switch to the "mosquitto" user and could then not
        # write the persistence database into a root-owned temporary directory.
        user = pwd.getpwuid(os.getuid()).pw_name
        lines = [
            f"user {user}",
            f"persistence {'true' if s['persistence'] else 'false'}",
            f"persistence_location {self.persistence_dir}/",
            f"autosave_interval {s['autosave_interval']}",
            f"max_queued_messages {s['max_queued_messages']}",
            f"max_inflight_messages {s['max_inflight_messages']}",
            f"log_dest file {self.log_path}",
            *(
                ["log_type all"]
                if s["verbose"]
                else [
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_type information",
                ]
            ),
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if s["password_file"] is not None:
            lines += ["allow_anonymous false", f"password_file {s['password_file']}"]
        else:
            lines.append("allow_anonymous true")
        lines.append(f"listener {self._port} {HOST}")
        if s["extra_config"]:
            lines.append(str(s["extra_config"]).strip())
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and return once its port accepts connections."""
        if self.running:
            raise RuntimeError(f"mosquitto on port {self._port} is already running")
        for _attempt in range(5):
            self._write_config()
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            # A test that forgets stop() must not leave its broker running after pytest.
            weakref.finalize(self, _reap, self._proc)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    break
                if _port_accepts(self._port):
                    return
                time.sleep(0.02)
            if self._proc.poll() is None:
                self.kill()
                raise TimeoutError(f"mosquitto did not listen on {self._port} in {timeout} s")
            if self._fixed_port:
                break
            # Another process took the port between free_port() and the bind: try another.
            self._port = free_port()
        raise RuntimeError(
            f"mosquitto exited with {self._proc.returncode if self._proc else '?'}; "
            f"log:\n{self.log_text()}"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Send ``sig`` to the broker and wait until the process has exited.

        SIGTERM makes Mosquitto write its persistence database before exiting.
        """
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the broker (by its own pid): no database write, connections dropped."""
        self.stop(signal.SIGKILL)

    def restart(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop (if running) and start again on the same port and persistence directory."""
        self.stop(sig, timeout)
        self._fixed_port = True
        self.start(timeout)

    def __enter__(self) -> PrivateMosquitto:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
