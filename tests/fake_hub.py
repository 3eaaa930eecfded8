"""A local HTTP server that answers like huggingface.co for hf_hub_download, plus plain URLs.

HEAD/GET /{repo}/resolve/{revision}/{path}: small files answer 200 with ETag, X-Repo-Commit and
Content-Length; LFS files (.safetensors, .dat, .pt, .pth) answer 302 with X-Linked-Etag (their
sha256), X-Linked-Size, X-Repo-Commit and a Location on the CDN, which is another origin (port), so
the client stops there and GETs the CDN URL.  Errors carry the X-Error-Code header the client maps
to its exceptions.  GET /files/...: plain URLs (the "url" source kind), with HTTP Range support.

Per-file faults, keyed by ``"{repo}/{path}"`` for Hub files and by the URL path for plain URLs:
``fail[key] = 404 | 500 | "corrupt"`` (corrupt: one byte flipped, the Hub advertising those bytes),
``cut[key] = n``: the next full GET sends n bytes of the body and drops the connection.
"""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

REPO = "test-user/falco-tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)$")
RANGE = re.compile(r"^bytes=(\d+)-$")
LFS_SUFFIXES = (".safetensors", ".dat", ".pt", ".pth")


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, bytes]] | None = None, urls: dict[str, bytes] | None = None):
        self.repos = repos if repos is not None else {}
        self.urls = urls if urls is not None else {}   # "/files/name" -> bytes
        self.fail: dict[str, int | str] = {}
        self.cut: dict[str, int] = {}
        self.sent: dict[str, int] = {}                 # body bytes sent per file key
        self.ranges: list[tuple[str, str]] = []        # (file key, Range header) of ranged GETs
        self.requests: list[tuple[str, str, str]] = []   # (origin, method, path)
        self.lock = threading.Lock()
        self.hub = self._serve("hub")
        self.cdn = self._serve("cdn")
        self.endpoint = f"http://127.0.0.1:{self.hub.server_port}"

    @classmethod
    def from_folder(cls, folder: Path, repo: str = REPO) -> FakeHub:
        return cls({repo: {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}})

    @property
    def files(self) -> dict[str, bytes]:
        """The files of the only repo (the single-repo tests)."""
        (files,) = self.repos.values()
        return files

    def url(self, path: str) -> str:
        return self.endpoint + path

    def _serve(self, origin: str) -> ThreadingHTTPServer:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):
                hub.handle(self, origin, body=False)

            def do_GET(self):
                hub.handle(self, origin, body=True)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return server

    def content(self, key: str) -> bytes:
        """The bytes served for a file key ("{repo}/{path}" or a URL path), faults included."""
        data = self.urls[key] if key in self.urls else self._hub_file(key)
        if self.fail.get(key) == "corrupt":
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
        return data

    def _hub_file(self, key: str) -> bytes:
        for repo, files in self.repos.items():
            if key.startswith(repo + "/") and key[len(repo) + 1:] in files:
                return files[key[len(repo) + 1:]]
        raise KeyError(key)

    def _keys(self) -> list[str]:
        return [f"{repo}/{path}" for repo, files in self.repos.items() for path in files]

    def gets(self, origin: str | None = None) -> list[str]:
        with self.lock:
            return [p for o, m, p in self.requests if m == "GET" and origin in (None, o)]

    def handle(self, request: BaseHTTPRequestHandler, origin: str, body: bool) -> None:
        with self.lock:
            self.requests.append((origin, request.command, request.path))
        if origin == "cdn":
            by_hash = {hashlib.sha256(self.content(key)).hexdigest(): key for key in self._keys()}
            key = by_hash.get(request.path.rsplit("/", 1)[-1])
            if key is None:
                return self.reply(request, 404, {}, b"", body)
            return self.send_file(request, key, body)
        if request.path in self.urls:
            status = self.fail.get(request.path)
            if isinstance(status, int):
                return self.reply(request, status, {}, b"", body)
            return self.send_file(request, request.path, body)
        match = RESOLVE.match(request.path)
        repo = unquote(match["repo"]) if match else None
        if repo not in self.repos:
            # The Hub answers 401 for a repo that does not exist (or is private) to anonymous users.
            return self.reply(request, 401, {"X-Error-Code": "RepoNotFound"}, b"", body)
        if unquote(match["revision"]) not in ("main", COMMIT):
            return self.reply(request, 404, {"X-Error-Code": "RevisionNotFound"}, b"", body)
        filename = unquote(match["filename"])
        key = f"{repo}/{filename}"
        if filename not in self.repos[repo] or self.fail.get(key) == 404:
            return self.reply(request, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, b"", body)
        if self.fail.get(key) == 500:
            return self.reply(request, 500, {}, b"", body)
        data = self.content(key)
        if filename.endswith(LFS_SUFFIXES):
            sha = hashlib.sha256(data).hexdigest()
            cdn = f"http://127.0.0.1:{self.cdn.server_port}/blobs/{sha}"
            return self.reply(request, 302, {"Location": cdn, "X-Linked-Etag": f'"{sha}"', "X-Repo-Commit": COMMIT,
                                             "X-Linked-Size": str(len(data)), "ETag": '"git-pointer"'}, b"", body)
        etag = hashlib.sha1(data).hexdigest()
        return self.reply(request, 200, {"ETag": f'"{etag}"', "X-Repo-Commit": COMMIT}, data, body)

    def send_file(self, request: BaseHTTPRequestHandler, key: str, body: bool) -> None:
        """200, or 206 for a ``Range: bytes=n-`` request; a pending cut drops the connection mid-body."""
        data, start = self.content(key), 0
        headers = {"Accept-Ranges": "bytes"}
        ranged = RANGE.match(request.headers.get("Range") or "")
        if ranged:
            with self.lock:
                self.ranges.append((key, request.headers["Range"]))
            start = int(ranged[1])
            if start >= len(data):
                return self.reply(request, 416, {"Content-Range": f"bytes */{len(data)}"}, b"", body)
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        payload = data[start:]
        cut = self.cut.pop(key, None) if body and not ranged else None
        request.send_response(206 if ranged else 200)
        for name, value in headers.items():
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        if body:
            sent = payload if cut is None else payload[:cut]
            request.wfile.write(sent)
            request.wfile.flush()
            with self.lock:
                self.sent[key] = self.sent.get(key, 0) + len(sent)
            request.close_connection = True

    @staticmethod
    def reply(request, status: int, headers: dict, data: bytes, body: bool) -> None:
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if body:
            request.wfile.write(data)

    def close(self) -> None:
        for server in (self.hub, self.cdn):
            server.shutdown()
            server.server_close()
