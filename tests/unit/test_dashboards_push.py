"""`slotune dashboards push` against a FAKE Grafana: no Grafana server can run on these machines, so
a small loopback HTTP server plays the three endpoints push uses (GET/POST /api/folders,
POST /api/dashboards/db), with Grafana's overwrite-by-uid semantics, and records each request."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from slotune.cli.main import main
from slotune.server import free_port
from tests.support import promstack

TOKEN = "glsa_test_token"


class FakeGrafana(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str, Any]] = []
        self.folders: dict[str, str] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}  # uid -> {"dashboard", "version", "id", "folderUid"}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeGrafana

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._reply(401, {"message": "invalid API key"})
            return False
        return True

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path, None))
        if not self._authorized():
            return
        if self.path.split("?")[0] == "/api/folders":
            return self._reply(200, [{"uid": u, "title": t} for u, t in self.server.folders.items()])
        self._reply(404, {"message": "not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"null")
        self.server.requests.append(("POST", self.path, body))
        if not self._authorized():
            return
        if self.path == "/api/folders":
            if body["uid"] in self.server.folders:
                return self._reply(409, {"message": "a folder with the same uid already exists"})
            self.server.folders[body["uid"]] = body["title"]
            return self._reply(200, {"uid": body["uid"], "title": body["title"]})
        if self.path == "/api/dashboards/db":
            dash = body["dashboard"]
            old = self.server.dashboards.get(dash["uid"])
            if old and not body.get("overwrite"):
                return self._reply(412, {"message": "A dashboard with the same uid already exists"})
            if body.get("folderUid") not in self.server.folders:
                return self._reply(400, {"message": "folder not found"})
            entry = {"dashboard": dash, "folderUid": body["folderUid"],
                     "id": old["id"] if old else len(self.server.dashboards) + 1,
                     "version": old["version"] + 1 if old else 1}
            self.server.dashboards[dash["uid"]] = entry
            return self._reply(200, {"id": entry["id"], "uid": dash["uid"], "status": "success",
                                     "version": entry["version"], "url": f"/d/{dash['uid']}/x"})
        self._reply(404, {"message": "not found"})


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    server = FakeGrafana()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_push_is_idempotent_and_keeps_uids(grafana: FakeGrafana, capsys) -> None:  # type: ignore[no-untyped-def]
    files = promstack.load_dashboards()
    args = ["dashboards", "push", "--grafana-url", grafana.url, "--token", TOKEN, "--folder", "LLM serving"]
    assert main(args) == 0
    first = {uid: (e["id"], e["version"]) for uid, e in grafana.dashboards.items()}
    assert main(args) == 0
    second = {uid: (e["id"], e["version"]) for uid, e in grafana.dashboards.items()}

    assert set(first) == {d["uid"] for d in files.values()}  # one dashboard per file, keyed on its uid
    assert {u: (i, v + 1) for u, (i, v) in first.items()} == second  # updated in place: same id, next version
    assert grafana.folders == {"llm-serving": "LLM serving"}  # created once, found the second time
    folder_posts = [r for r in grafana.requests if r[:2] == ("POST", "/api/folders")]
    assert len(folder_posts) == 1
    for _, path, body in grafana.requests:
        if path == "/api/dashboards/db":
            assert body["overwrite"] is True and body["folderUid"] == "llm-serving"
            assert "id" not in body["dashboard"]
    for d in files.values():  # what Grafana stores is the committed JSON
        stored = grafana.dashboards[d["uid"]]["dashboard"]
        assert stored == {k: v for k, v in d.items() if k != "version"}
    out = capsys.readouterr().out
    assert out.count("version=2") == len(files)


def test_wrong_token_is_a_one_line_error(grafana: FakeGrafana, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["dashboards", "push", "--grafana-url", grafana.url, "--token", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Grafana at") and "401" in err and err.count("\n") == 1
    assert grafana.dashboards == {}


def test_unreachable_grafana_is_a_one_line_error(capsys) -> None:  # type: ignore[no-untyped-def]
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["dashboards", "push", "--grafana-url", url, "--token", TOKEN]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach Grafana") and err.count("\n") == 1


def test_empty_directory_is_a_config_error(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["dashboards", "push", "--grafana-url", "http://127.0.0.1:1", "--token", TOKEN,
                 "--dir", str(tmp_path)]) == 1
    assert "no dashboard JSON files" in capsys.readouterr().err


HTML_404 = "<!DOCTYPE html>\n<html>\n<head>\n<title>404 Not Found</title>\n</head>\n<body>\n" + \
    "<h1>Not Found</h1>\n" * 6 + "</body>\n</html>\n"


class _OddHandler(BaseHTTPRequestHandler):
    """Answers every request with the server's one canned reply: something that is not Grafana."""
    reply: tuple[int, str, str]

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        code, ctype, body = self.server.reply  # type: ignore[attr-defined]
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer


ODD = {
    "folders is a JSON string": ((200, "application/json", '"hello"'), "folders"),
    "folders is a JSON object": ((200, "application/json", '{"message": "ok"}'), "folders"),
    "folders is a list of strings": ((200, "application/json", '["a", "b"]'), "folders"),
    "folders is not JSON": ((200, "text/plain", "hello\nworld\n"), "Grafana at"),
    "404 with an HTML page": ((404, "text/html", HTML_404), "404"),
    "500 with a long JSON body": ((500, "application/json", json.dumps({"message": "x" * 5000})), "500"),
}


@pytest.mark.parametrize("reply,expected", list(ODD.values()), ids=list(ODD))
def test_a_server_that_is_not_grafana_is_a_one_line_error(reply: tuple[int, str, str], expected: str,
                                                          capsys) -> None:  # type: ignore[no-untyped-def]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OddHandler)
    server.reply = reply  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code = main(["dashboards", "push", "--grafana-url", f"http://127.0.0.1:{server.server_address[1]}",
                     "--token", TOKEN])
    finally:
        server.shutdown()
        server.server_close()
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("error: ") and err.count("\n") == 1, err
    assert expected in err and len(err) < 400 and "<html>" not in err, err
    if reply[0] == 404:
        assert "404 Not Found" in err  # the page's title says what it is
