"""Starting `python app.py` for a test, the way a user does, on a free port.

Its output goes to a log file, never an unread pipe: a full pipe would block the server
in the middle of a request once it has printed 64 KB of warnings.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_served(url: str, proc: subprocess.Popen, log: Path | None = None,
                      timeout: float = 300) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            output = log.read_text()[-4000:] if log and log.is_file() else ""
            raise AssertionError(f"app exited with {proc.returncode}: {output}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} not served within {timeout}s")


@contextlib.contextmanager
def running_app(args: list[str], log: Path, env: dict | None = None):
    """Yields the base URL of `python app.py ARGS --port <free>`; stops it afterwards."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "app.py", *args, "--port", str(port)], cwd=ROOT,
                                env=dict(env or os.environ), stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_until_served(url, proc, log)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=60)
