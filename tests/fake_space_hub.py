"""A local HTTP server that answers like huggingface.co's API for creating and running a Space.

What ``HfApi`` calls when deploying and checking: create a repo (``POST /api/repos/create``), list its files
(``GET /api/spaces/{id}/tree/{rev}``), preupload (every file regular, none LFS) and commit (the NDJSON payload
applied to the repo's files; the README's front matter validated first), variables (add, list, delete), hardware,
volumes, buckets, runtime and space info.
Every request needs a bearer token, as the Hub's write API does.

``runtime_stages[space_id]`` lists the stages the runtime answers in turn (the last one repeats);
``host[space_id]`` is the app's address that ``space_info`` names; ``fail[(method, path)] = status`` fails a call.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
SPACE = re.compile(r"^/api/spaces/(?P<id>[^/]+/[^/]+)(?P<rest>/.*)?$")


class FakeSpaceHub:
    def __init__(self):
        self.spaces: dict[str, dict] = {}        # id -> {"sdk", "private", "hardware", "files", "variables", ...}
        self.buckets: list[str] = []
        self.runtime_stages: dict[str, list[str]] = {}
        self.host: dict[str, str] = {}
        self.fail: dict[tuple[str, str], int] = {}
        self.requests: list[tuple[str, str]] = []   # (method, path)
        self.commits: list[dict] = []
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hub.handle(self)

            def do_POST(self):
                hub.handle(self)

            def do_PUT(self):
                hub.handle(self)

            def do_DELETE(self):
                hub.handle(self)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self, method: str, suffix: str) -> int:
        return sum(1 for m, p in self.requests if m == method and urlparse(p).path.endswith(suffix))

    # -- dispatch --
    def handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        path = urlparse(request.path).path
        with self.lock:
            self.requests.append((request.command, request.path))
            if not (request.headers.get("Authorization") or "").startswith("Bearer "):
                return self.reply(request, 401, {"error": "Invalid credentials"})
            status = self.fail.get((request.command, path))
            if status is not None:
                return self.reply(request, status, {"error": f"failed on purpose ({status})"})
            if request.command == "POST" and path == "/api/repos/create":
                return self.create(request, json.loads(body))
            if request.command == "POST" and path == "/api/validate-yaml":
                return self.validate_yaml(request, json.loads(body)["content"])
            if path.startswith("/api/buckets/") and request.command == "POST":
                bucket = path.removeprefix("/api/buckets/")
                if bucket in self.buckets:
                    return self.reply(request, 409, {"error": "exists"})
                self.buckets.append(bucket)
                return self.reply(request, 200, {"url": f"{self.endpoint}/buckets/{bucket}"})
            match = SPACE.match(path)
            if match is None or unquote(match["id"]) not in self.spaces:
                return self.reply(request, 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            return self.space_call(request, unquote(match["id"]), match["rest"] or "", body)

    def create(self, request, payload: dict) -> None:
        space_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        url = {"url": f"{self.endpoint}/spaces/{space_id}", "name": space_id}
        if space_id in self.spaces:
            return self.reply(request, 409, {"error": "You already created this space repo", **url})
        self.spaces[space_id] = {"type": payload.get("type"), "sdk": payload.get("sdk"),
                                 "private": payload.get("private", payload.get("visibility") == "private"),
                                 "hardware": payload.get("hardware"),
                                 "requested_hardware": payload.get("hardware"), "files": {".gitattributes": b"*.bin"},
                                 "variables": {}, "volumes": []}
        return self.reply(request, 200, url)

    def validate_yaml(self, request, content: str) -> None:
        """The README's front matter must be YAML that names an SDK, as the Hub requires of a Space."""
        import yaml
        try:
            data = yaml.safe_load(content.split("---")[1]) if content.startswith("---") else None
        except yaml.YAMLError as err:
            return self.reply(request, 400, {"errors": [{"message": str(err)}]})
        if not isinstance(data, dict) or "sdk" not in data:
            return self.reply(request, 400, {"errors": [{"message": "a Space's README names its sdk"}]})
        return self.reply(request, 200, {"errors": [], "warnings": []})

    def space_call(self, request, space_id: str, rest: str, body: bytes) -> None:
        space, method = self.spaces[space_id], request.command
        if method == "GET" and rest == "":
            host = self.host.get(space_id)
            return self.reply(request, 200, {"id": space_id, "host": host, "sdk": space["sdk"],
                                             "subdomain": space_id.replace("/", "-")})
        if method == "GET" and rest.startswith("/tree/"):
            return self.reply(request, 200, [
                {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                for name, data in sorted(space["files"].items())])
        if method == "POST" and rest.startswith("/preupload/"):
            files = json.loads(body)["files"]
            return self.reply(request, 200, {"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if method == "POST" and rest.startswith("/commit/"):
            return self.commit(request, space_id, body)
        if rest == "/variables":
            if method == "POST":
                payload = json.loads(body)
                space["variables"][payload["key"]] = {"value": payload["value"],
                                                      "description": payload.get("description")}
            elif method == "DELETE":
                space["variables"].pop(json.loads(body)["key"], None)
            return self.reply(request, 200, space["variables"])
        if method == "POST" and rest == "/hardware":
            space["requested_hardware"] = json.loads(body)["flavor"]
            return self.reply(request, 200, self.runtime(space_id, advance=False))
        if method == "PUT" and rest == "/volumes":
            space["volumes"] = json.loads(body)["volumes"]
            return self.reply(request, 200, {})
        if method == "GET" and rest == "/runtime":
            return self.reply(request, 200, self.runtime(space_id, advance=True))
        return self.reply(request, 404, {"error": f"no such call {method} {rest}"})

    def commit(self, request, space_id: str, body: bytes) -> None:
        space = self.spaces[space_id]
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        files = dict(space["files"])
        for line in lines:
            if line["key"] == "file":
                files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            elif line["key"] == "deletedFile":
                files.pop(line["value"]["path"])
            elif line["key"] != "header":
                return self.reply(request, 400, {"error": f"unexpected {line['key']}"})
        space["files"] = files
        self.commits.append({"summary": lines[0]["value"]["summary"], "operations": lines[1:]})
        return self.reply(request, 200, {"commitUrl": f"{self.endpoint}/spaces/{space_id}/commit/{COMMIT}",
                                         "commitOid": COMMIT, "success": True})

    def runtime(self, space_id: str, advance: bool) -> dict:
        stages = self.runtime_stages.setdefault(space_id, ["RUNNING"])
        stage = stages.pop(0) if advance and len(stages) > 1 else stages[0]
        space = self.spaces[space_id]
        data = {"stage": stage, "hardware": {"current": space["hardware"] or "cpu-basic",
                                             "requested": space["requested_hardware"]},
                "volumes": space["volumes"]}
        if stage.endswith("ERROR"):
            data["errorMessage"] = "ModuleNotFoundError: No module named 'dlib'\nTraceback ..."
        return data

    @staticmethod
    def reply(request, status: int, payload, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)
