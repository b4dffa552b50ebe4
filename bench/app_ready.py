"""app_ready_s: seconds from `python app.py` to the first served page.

Measured twice in fresh projects folders: `cold` includes building the demo model,
`warm` reuses a demo model that already exists. Prints one JSON object per line.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_ready(projects: Path, timeout: float = 180) -> float:
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "app.py", "--projects-dir", str(projects),
                             "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.monotonic() - started < timeout:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                    return time.monotonic() - started
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit(f"app.py exited with {proc.returncode}")
                time.sleep(0.1)
        raise SystemExit(f"app not ready within {timeout}s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        projects = Path(tmp) / "projects"
        for label in ("cold", "warm"):
            seconds = time_to_ready(projects)
            print(json.dumps({"bench": "app_ready_s", "value": round(seconds, 2), "unit": "s",
                              "case": label, "goal": "<= 20"}), flush=True)


if __name__ == "__main__":
    main()
