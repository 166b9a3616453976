"""Helpers the server fixtures share: free loopback ports, binaries, waiting for a port, stopping a process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def need(binary: str, package: str) -> str:
    """Path of a server binary; a missing one fails the test (never skips) naming the package."""
    found = shutil.which(binary) or next(
        (str(p) for p in (Path("/usr/sbin") / binary, Path("/usr/lib/postfix/sbin") / binary)
         if p.exists()), None)
    if found is None:
        pytest.fail(f"{binary} not found: install the Debian package {package} "
                    f"(scripts/test.sh does this when run as root)", pytrace=False)
    return found


def wait_port(host: str, port: int, timeout: float = 15.0) -> None:
    """Block until something accepts on host:port, or fail the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nothing listening on {host}:{port} after {timeout}s", pytrace=False)


def wait_for(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds, or fail the test naming ``what`` (instead of sleeping a guess)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not reached after {timeout}s", pytrace=False)
        time.sleep(0.01)


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Send ``sig`` to a still-running process and reap it; SIGKILL if it outlives ``timeout`` seconds."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_log(path: Path) -> str:
    """A process's log file, or "" if there is none (yet)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def new_root(prefix: str) -> Path:
    """A world-traversable temp dir (Dovecot's and Postfix's processes run as other users, not root)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    return root
