"""Launch hardening for the browser app: what may be reached without logging in, and which
files the file routes may serve.

Gradio checks the login on most routes but not all (heartbeat, cancel, reset, component
server, custom components, streams, run history…), and its file route serves anything in
its temp folder, which by default is /tmp/gradio, shared by every Gradio app on the machine.
So the studio puts that folder inside the projects folder and wraps the whole app in one
gate: with --auth, nothing but the login page and Gradio's own frontend files is served
before logging in; logged in or not, the file routes serve only files inside the projects
folder, never the SQLite store, never a URL.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from starlette.middleware import Middleware
from starlette.requests import HTTPConnection

# The login page needs these before anyone has logged in; "/" then shows only the login form.
PUBLIC_PATHS = {"/", "/login", "/login/", "/favicon.ico", "/theme.css", "/gradio_api/theme.css",
                "/manifest.json", "/robots.txt",
                "/gradio_api/startup-events"}  # launch() itself calls it, without a login
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/")  # Gradio's frontend build, read-only
FILE_PREFIXES = ("/gradio_api/file=", "/gradio_api/file/", "/file=")
REFUSED_PREFIXES = ("/gradio_api/proxy=",)  # the studio never proxies other servers
PRIVATE_NAMES = ("studio.db", "studio.db-wal", "studio.db-shm", "studio.db-journal")


def gradio_cache(root: Path) -> Path:
    return root / "_cache" / "gradio"  # '_' cannot start a project name: no clash


def use_private_cache(root: Path) -> Path:
    """Point Gradio's upload/output folder into the projects folder. Call it before building
    the app: components read $GRADIO_TEMP_DIR when they are created."""
    folder = gradio_cache(root)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    return folder


def launch_options(root: Path) -> dict:
    """Keyword arguments for Blocks.launch: the gate, and the same file policy told to Gradio
    (allowed_paths also lets history images stored outside the cwd be shown)."""
    root = Path(root).resolve()
    return {
        "allowed_paths": [str(root)],
        "blocked_paths": [str(root / name) for name in PRIVATE_NAMES],
        "app_kwargs": {"middleware": [Middleware(StudioGate, roots=[root])]},
    }


def may_serve(target: str, roots: list[Path]) -> bool:
    """Whether a file route may send `target` (a path as Gradio reads it: relative to the cwd)."""
    if "://" in target or target.startswith(("http:", "https:", "//")):
        return False
    try:
        real = Path(os.path.abspath(target)).resolve()  # resolve: symlinks and `..` count
    except (OSError, RuntimeError, ValueError):
        return False
    if real.name in PRIVATE_NAMES:
        return False
    return any(real.is_relative_to(root) for root in roots)


def logged_in(gradio_app, connection: HTTPConnection) -> bool:
    cookie_id = gradio_app.cookie_id  # Gradio's own login cookie, as its get_current_user reads it
    token = (connection.cookies.get(f"access-token-{cookie_id}")
             or connection.cookies.get(f"access-token-unsecure-{cookie_id}"))
    return token is not None and token in gradio_app.tokens


class StudioGate:
    """ASGI middleware: refuses what the studio must not serve before Gradio's routes run."""

    def __init__(self, app, roots: list[Path]):
        self.app = app
        self.roots = [Path(r).resolve() for r in roots]

    def refusal(self, scope) -> tuple[int, str] | None:
        path = scope["path"]  # already percent-decoded: %2e%2e arrives as ..
        gradio_app = scope["app"]  # Starlette puts the Gradio App here before any middleware
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
        if getattr(gradio_app, "auth", None) and not public \
                and not logged_in(gradio_app, HTTPConnection(scope)):
            return 401, "Not authenticated"
        if path.startswith(REFUSED_PREFIXES):
            return 403, "Not served by the studio"
        for prefix in FILE_PREFIXES:
            if path.startswith(prefix) and not may_serve(path[len(prefix):], self.roots):
                return 403, "File not allowed"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        refused = self.refusal(scope)
        if refused is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        status, message = refused
        body = json.dumps({"detail": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
