"""Safe defaults of the browser app, checked with raw HTTP against a real server started as a
user starts it (`STUDIO_AUTH=… python app.py`): every route refuses a request without the
login, the file routes serve nothing outside the projects folder (logged in or not), uploads
have a size limit, zip imports refuse entries that point outside the archive."""
import http.client
import json
import os
import re
import uuid
import zipfile
from pathlib import Path
from urllib.parse import quote

import pytest
from gradio_client import Client, handle_file

from studio.store import Store
from studio.ui import app as studio_app
from tests.conftest import make_image
from tests.dataset_helpers import jpeg
from tests.app_process import ROOT, running_app

USER, PASSWORD = "alice", "s3cret-pass"
# What may answer before logging in: the login page and Gradio's own frontend build.
PUBLIC_ROUTES = {"/", "/login", "/login/", "/favicon.ico", "/theme.css", "/gradio_api/theme.css",
                 "/manifest.json", "/robots.txt", "/gradio_api/startup-events",
                 "/assets/{path:path}", "/static/{path:path}", "/svelte/{path:path}"}
SECRETS = (b"root:x:0", b"SQLite format 3")  # /etc/passwd, the store


class Server:
    def __init__(self, port: int, projects: Path):
        self.port, self.projects, self.url = port, projects, f"http://127.0.0.1:{port}/"
        self.cookie = ""

    def request(self, method: str, path: str, body=None, headers=None, login=False):
        """(status, body bytes); the path goes out byte for byte (no `..` folding)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = dict(headers or {})
        if login:
            headers["Cookie"] = self.cookie
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read() if method != "HEAD" else b""
        conn.close()
        return response.status, data

    def log_in(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("POST", "/login", f"username={USER}&password={PASSWORD}",
                     {"Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        assert response.status == 200, response.read()
        cookies = [h.split(";")[0] for k, h in response.getheaders() if k.lower() == "set-cookie"]
        conn.close()
        self.cookie = "; ".join(cookies)
        assert "access-token" in self.cookie

    def upload(self, name: str, data: bytes, login=True):
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
                f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        body += data + f"\r\n--{boundary}--\r\n".encode()
        return self.request("POST", "/gradio_api/upload", body,
                            {"Content-Type": f"multipart/form-data; boundary={boundary}"}, login)


@pytest.fixture(scope="module")
def server(demo_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("secure")
    projects = folder / "projects"
    env = dict(os.environ, STUDIO_AUTH=f"{USER}:{PASSWORD}")  # the variable, not --auth
    with running_app(["--model", str(demo_model), "--projects-dir", str(projects),
                      "--max-upload", "1mb"], folder / "app.log", env) as url:
        served = Server(int(url.rstrip("/").rsplit(":", 1)[1]), projects)
        served.log_in()
        yield served


def app_routes(demo_model, tmp_path) -> list[tuple[str, str]]:
    """(method, path template) of every route the studio's Gradio app serves, read from the
    FastAPI app Gradio builds for it (so new Gradio routes or tabs are covered too)."""
    from gradio.routes import App
    from studio.engine.editor import Editor
    from studio.jobs.manager import JobManager

    store = Store(tmp_path / "routes")
    store.create_project("default")
    blocks = studio_app.build_app(store, Editor(demo_model, device="cpu"), JobManager(store))
    blocks.queue()
    blocks.auth = [(USER, PASSWORD)]

    def flatten(routes, prefix=""):
        for route in routes:
            if hasattr(route, "original_router"):  # FastAPI's included router
                yield from flatten(route.original_router.routes,
                                   prefix + route.include_context.prefix)
            elif hasattr(route, "path"):
                for method in getattr(route, "methods", None) or ["GET"]:
                    yield method, prefix + route.path
    return sorted(set(flatten(App.create_app(blocks).routes)))


SAMPLE_PARAMS = {"path_or_url": "/etc/passwd", "path": "index.html", "component_id": "1",
                 "size": "192", "ext": "ts", "environment": "client", "api_name": "edit"}


def concrete(template: str) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: SAMPLE_PARAMS.get(m.group(1), "x"), template)


def test_binds_loopback_unless_host_is_given(server):
    assert studio_app.parse_args([]).host == "127.0.0.1"
    assert studio_app.parse_args(["--host", "0.0.0.0"]).host == "0.0.0.0"
    # The kernel's table of listening sockets: the app listens on 127.0.0.1 only.
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port = local.rsplit(":", 1)
            if state == "0A" and int(port, 16) == server.port:  # 0A: LISTEN
                listening.append(address)
    assert listening == ["0100007F"], listening  # 127.0.0.1, little-endian hex


def test_every_route_refuses_a_request_without_the_login(server, demo_model, tmp_path):
    routes = app_routes(demo_model, tmp_path)
    templates = {path for _, path in routes}
    for needed in ("/config", "/gradio_api/upload", "/gradio_api/queue/join",
                   "/gradio_api/file={path_or_url:path}", "/gradio_api/heartbeat/{session_hash}",
                   "/gradio_api/info"):
        assert needed in templates  # the enumeration found the routes that matter
    refused, public = [], []
    for method, template in routes:
        status, body = server.request(method, concrete(template))
        if template in PUBLIC_ROUTES:
            public.append(template)
            assert not any(secret in body for secret in SECRETS)
        else:
            assert status == 401, f"{method} {template} answered {status} without a login"
            refused.append(template)
    assert len(refused) > 40 and "/" in public
    status, page = server.request("GET", "/")
    assert status == 200 and b'"auth_required":true' in page
    assert b"random weights" not in page and b"model-notice" not in page  # no app content
    # A path no route knows is refused too, not answered by Gradio.
    assert server.request("GET", "/gradio_api/not-a-route")[0] == 401


def test_the_login_opens_the_same_routes(server):
    status, config = server.request("GET", "/config", login=True)
    assert status == 200 and b"random weights" in config
    assert server.request("GET", "/gradio_api/info", login=True)[0] == 200
    status, page = server.request("GET", "/", login=True)
    assert status == 200 and b"random weights" in page
    wrong = Server(server.port, server.projects)
    status, _ = wrong.request("POST", "/login", f"username={USER}&password=nope",
                              {"Content-Type": "application/x-www-form-urlencoded"})
    assert status in (400, 401)


def test_uploads_need_the_login_and_respect_the_size_limit(server):
    cache = server.projects / "_cache" / "gradio"
    before = sorted(p for p in cache.rglob("*") if p.is_file())
    assert server.upload("a.png", b"x" * 100, login=False)[0] == 401
    assert sorted(p for p in cache.rglob("*") if p.is_file()) == before  # nothing stored

    status, body = server.upload("big.bin", b"x" * (1024 * 1024 + 10))  # --max-upload 1mb
    assert status == 413, body
    status, body = server.upload("small.txt", b"hello studio")
    assert status == 200
    stored = Path(json.loads(body)[0])
    assert stored.resolve().is_relative_to(cache.resolve())  # Gradio's cache is the studio's
    status, data = server.request("GET", "/gradio_api/file=" + quote(str(stored)), login=True)
    assert status == 200 and data == b"hello studio"
    assert server.request("GET", "/gradio_api/file=" + quote(str(stored)))[0] == 401


def traversal_targets(projects: Path) -> list[str]:
    db = projects / "studio.db"
    cache = projects / "_cache" / "gradio"
    cache.mkdir(parents=True, exist_ok=True)
    for name, target in (("passwd-link", "/etc/passwd"), ("db-link.png", str(db))):
        link = cache / name
        if not link.is_symlink():
            link.symlink_to(target)  # a link planted where uploads live
    depth = "../" * (len(cache.parts) + 2)
    return [
        "/etc/passwd", depth + "etc/passwd", quote(depth + "etc/passwd", safe=""),
        "%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        str(cache) + "/" + depth + "etc/passwd", str(cache / "passwd-link"),
        str(db), str(db) + "-wal", str(cache / "db-link.png"), str(cache) + "/../../studio.db",
        quote(str(db), safe=""), str(ROOT / "app.py"), "app.py", "projects/studio.db",
        "http://127.0.0.1:1/", "file:///etc/passwd",
    ]


@pytest.mark.parametrize("login", [False, True])
def test_file_routes_serve_nothing_outside_the_projects_folder(server, login):
    attempts = [prefix + target for target in traversal_targets(server.projects)
                for prefix in ("/gradio_api/file=", "/gradio_api/file/", "/file=")]
    attempts.append("/gradio_api/proxy=http://127.0.0.1:1/")
    for path in attempts:
        status, body = server.request("GET", path, login=login)
        assert status == (403 if login else 401), f"{path}: {status}"
        assert not any(secret in body for secret in SECRETS), path
    # Gradio's own frontend files are public: traversal out of them fails too.
    for path in ("/assets/../../../../../../etc/passwd", "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                 "/svelte/..%2f..%2f..%2f..%2f..%2fetc/passwd", "/assets/%2e%2e%2f__init__.py"):
        status, body = server.request("GET", path, login=login)
        assert status in (403, 404) and not any(secret in body for secret in SECRETS), path


def test_an_edit_through_the_logged_in_client_and_its_file(server, tmp_path):
    make_image(48, 32).save(tmp_path / "in.png")
    client = Client(server.url, auth=(USER, PASSWORD), verbose=False)
    image_path, note, _ = client.predict(
        "default", handle_file(str(tmp_path / "in.png")), None, None, "make it blue", "",
        1, 2, 1.0, 32, 32, *(None, 1.0) * 3, api_name="/edit")
    assert Path(image_path).is_file() and "saved to `default` history" in note
    with pytest.raises(Exception):
        Client(server.url, auth=(USER, "wrong"), verbose=False)


def test_zip_with_entries_outside_the_archive_is_refused_through_the_app(server, tmp_path):
    client = Client(server.url, auth=(USER, PASSWORD), verbose=False)
    store = Store(server.projects)
    before = store.pairs.count("default")
    for evil in ("../escape.jpg", "/etc/cron.d/evil.jpg", "set/../../x.jpg"):
        archive = tmp_path / "evil.zip"
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("source_a.jpg", jpeg(1))
            z.writestr(evil, jpeg(2))
        with pytest.raises(Exception, match="points outside the archive"):
            client.predict("default", [handle_file(str(archive))], 0, 0, "", "", "", 1,
                           api_name="/dataset_import")
    assert store.pairs.count("default") == before
    assert not (server.projects.parent / "escape.jpg").exists()


def test_sql_metacharacters_are_data(tmp_path):
    """Values reach SQLite only as bound parameters: quotes, LIKE wildcards and statements in
    an instruction are stored and searched as text."""
    from studio.dataset import importers

    store = Store(tmp_path / "projects")
    store.create_project("p")
    evil = "x'); DROP TABLE pairs; --"
    (tmp_path / "s.jpg").write_bytes(jpeg(1))
    (tmp_path / "t.jpg").write_bytes(jpeg(2))
    (tmp_path / "s2.jpg").write_bytes(jpeg(3))
    importers.import_pair(store, "p", tmp_path / "s.jpg", tmp_path / "t.jpg", evil)
    importers.import_pair(store, "p", tmp_path / "s2.jpg", tmp_path / "t.jpg", "100% done_ok")
    assert store.pairs.count("p") == 2
    assert [r["instruction"] for r in store.pairs.page("p", search="'); DROP")] == [evil]
    assert [r["instruction"] for r in store.pairs.page("p", search="%")] == ["100% done_ok"]
    assert store.pairs.count("p", search="n_") == 0  # `_` is literal: "ne" does not match
    assert store.pairs.count("p", search="e_") == 1
    with pytest.raises(ValueError):
        store.pairs.add("p", [{"sample_id": "a", "pair_key": "k",
                                  "instruction) VALUES (1); --": "x"}])
    with pytest.raises(ValueError, match="invalid project name"):
        store.create_project("p'; DROP TABLE projects; --")
