"""A small Hugging Face Hub-compatible HTTP server on 127.0.0.1, for tests.

It speaks the subset of the Hub API that ``huggingface_hub`` 2.4 uses to create repositories, upload folders
(regular files inside the commit, or Git LFS with one-time upload tickets, single-part or multipart), create
branches and pull requests, and download snapshots (model info, tree, ``resolve`` with HEAD/GET/Range). The facts
it honours are listed in ``shared/hub-protocol.md``. Storage lives in a directory (a temp dir in tests); commits get
40-hex ids.

Use it in-process::

    server = HubServer(storage_dir, upload_mode="auto")   # "auto" | "regular" | "lfs"
    server.start()            # serves in a background thread; server.url is the endpoint
    ...
    server.stop()

or as a subprocess: ``python tests/hub_server.py --storage DIR [--port 0] [--upload-mode auto]`` prints the
endpoint URL on its first stdout line.

Test hooks (also reachable over HTTP with ``POST /_test/fail-commits {"count": n, "status": 500}``):
``server.fail_commits(n, status)`` makes the next ``n`` commit requests fail with ``status``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_EXTENSIONS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".png", ".jpg", ".msgpack", ".zip")
DEFAULT_GITATTRIBUTES = "".join(f"*{ext} filter=lfs diff=lfs merge=lfs -text\n" for ext in LFS_EXTENSIONS)


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob with content ``data``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class FileEntry:
    """A file in a commit: its size, git blob id, LFS sha256 (if LFS) and where its bytes are stored."""

    size: int
    blob_id: str
    blob_path: Path
    lfs_sha256: str | None = None


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    files: dict[str, FileEntry]
    date: str = field(default_factory=_now)


@dataclass
class Repo:
    repo_id: str
    private: bool
    refs: dict[str, str] = field(default_factory=dict)  # "main", "refs/pr/1", ... -> commit oid
    commits: dict[str, Commit] = field(default_factory=dict)
    discussions: list[dict[str, Any]] = field(default_factory=list)


class HubState:
    """Repositories, commits, blobs and LFS objects, stored under ``root``. Thread-safe through one lock."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        (self.root / "lfs").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        self.repos: dict[str, Repo] = {}
        self.lock = threading.RLock()
        self.tickets: dict[str, dict[str, Any]] = {}  # one-time LFS upload tickets
        self.commit_failures: list[int] = []  # statuses of the next failing commit requests
        self.requests: list[tuple[str, str]] = []  # (method, path) log for assertions

    # ----------------------------------------------------------------- storage
    def store_blob(self, data: bytes) -> FileEntry:
        blob_id = git_blob_sha1(data)
        path = self.root / "blobs" / blob_id
        if not path.exists():
            path.write_bytes(data)
        return FileEntry(size=len(data), blob_id=blob_id, blob_path=path)

    def lfs_path(self, sha256: str) -> Path:
        return self.root / "lfs" / sha256

    def make_commit(self, repo: Repo, parent: str | None, title: str, files: dict[str, FileEntry]) -> Commit:
        seed = json.dumps([repo.repo_id, parent, title, sorted((p, f.blob_id) for p, f in files.items()),
                           time.time_ns(), secrets.token_hex(4)])
        oid = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(oid=oid, parent=parent, title=title, files=files)
        repo.commits[oid] = commit
        return commit

    def create_repo(self, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_id=repo_id, private=private)
        entry = self.store_blob(DEFAULT_GITATTRIBUTES.encode())
        commit = self.make_commit(repo, None, "initial commit", {".gitattributes": entry})
        repo.refs["main"] = commit.oid
        self.repos[repo_id] = repo
        return repo

    @staticmethod
    def resolve(repo: Repo, revision: str) -> Commit | None:
        revision = unquote(revision)
        revision = revision.removeprefix("refs/heads/")
        if revision in repo.refs:
            return repo.commits[repo.refs[revision]]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            matches = [oid for oid in repo.commits if oid.startswith(revision)]
            if len(matches) == 1:
                return repo.commits[matches[0]]
        return None


class HubRequestHandler(BaseHTTPRequestHandler):
    """Routes Hub API requests to :class:`HubState`."""

    protocol_version = "HTTP/1.1"
    server: HubHTTPServer

    # ----------------------------------------------------------------- plumbing
    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def state(self) -> HubState:
        return self.server.state

    @property
    def endpoint(self) -> str:
        return self.server.url

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size_line = self.rfile.readline().strip()
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json", head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None, head: bool = False) -> None:
        self._send(status, json.dumps(data).encode(), headers, head=head)

    def _error(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None,
               head: bool = False) -> None:
        extra = dict(headers or {})
        if code:
            extra["X-Error-Code"] = code
        extra["X-Error-Message"] = message
        self._json(status, {"error": message}, extra, head=head)

    def _segments(self) -> tuple[list[str], dict[str, list[str]]]:
        parts = urlsplit(self.path)
        # Split the raw path before unquoting: revisions arrive quoted ("refs%2Fpr%2F1").
        segments = [unquote(s) for s in parts.path.split("/") if s != ""]
        return segments, parse_qs(parts.query)

    def _repo_or_404(self, repo_id: str, head: bool = False) -> Repo | None:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            self._error(404, f"Repository {repo_id} not found", "RepoNotFound", head=head)
        return repo

    # ----------------------------------------------------------------- dispatch
    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        body = self._read_body() if method in ("POST", "PUT", "DELETE") else b""
        segments, query = self._segments()
        with self.state.lock:
            self.state.requests.append((method, urlsplit(self.path).path))
        try:
            self._route(method, segments, query, body)
        except Exception as exc:  # noqa: BLE001 - a bug in the test server: answer 500 with the reason
            self._error(500, f"test hub server error: {exc!r}")

    def _route(self, method: str, seg: list[str], query: dict[str, list[str]], body: bytes) -> None:
        head = method == "HEAD"
        if seg[:1] == ["_test"] and method == "POST":
            return self._test_hook(seg[1:], body)
        if seg[:1] == ["_lfs"]:
            return self._lfs_transfer(method, seg[1:], body)
        if seg[:1] == ["api"]:
            if seg[1:3] == ["repos", "create"] and method == "POST":
                return self._create_repo(json.loads(body or b"{}"))
            if seg[1:2] == ["validate-yaml"] and method == "POST":
                return self._json(200, {"errors": [], "warnings": []})
            if seg[1:2] == ["whoami-v2"]:
                return self._json(200, {"type": "user", "name": "user", "orgs": [], "auth": {}})
            if len(seg) >= 4 and seg[1] in ("models", "datasets", "spaces"):
                return self._repo_api(method, seg[2] + "/" + seg[3], seg[4:], query, body, head)
            return self._error(404, f"Unknown API route {self.path}")
        # /{owner}/{name}.git/info/lfs/objects/{batch|verify}
        if len(seg) >= 6 and seg[1].endswith(".git") and seg[2:5] == ["info", "lfs", "objects"]:
            return self._lfs_api(seg[0] + "/" + seg[1][: -len(".git")], seg[5], body)
        # /{owner}/{name}/resolve/{rev}/{path}
        if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(seg[0] + "/" + seg[1], seg[3], "/".join(seg[4:]), head)
        return self._error(404, f"Not found: {self.path}", head=head)

    # ----------------------------------------------------------------- test hooks
    def _test_hook(self, seg: list[str], body: bytes) -> None:
        data = json.loads(body or b"{}")
        if seg == ["fail-commits"]:
            self.server.fail_commits(int(data.get("count", 1)), int(data.get("status", 500)))
            return self._json(200, {"ok": True})
        return self._error(404, "unknown test hook")

    # ----------------------------------------------------------------- repos
    def _create_repo(self, payload: dict[str, Any]) -> None:
        name, organization = payload.get("name"), payload.get("organization")
        if not name:
            return self._error(400, "name is required")
        repo_id = f"{organization or 'user'}/{name}"
        if payload.get("type", "model") != "model":
            return self._error(400, "this test server only hosts model repositories")
        url = f"{self.endpoint}/{repo_id}"
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        with self.state.lock:
            if repo_id in self.state.repos:
                return self._json(409, {"error": "You already created this model repo", "url": url})
            self.state.create_repo(repo_id, private)
        return self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _repo_api(self, method: str, repo_id: str, rest: list[str], query: dict[str, list[str]], body: bytes,
                  head: bool) -> None:
        repo = self._repo_or_404(repo_id, head)
        if repo is None:
            return None
        action = rest[0] if rest else None
        if action is None and method in ("GET", "HEAD"):
            return self._model_info(repo, "main", head)
        if action == "revision" and len(rest) >= 2:
            return self._model_info(repo, "/".join(rest[1:]), head)
        if action == "tree" and len(rest) >= 2:
            return self._tree(repo, rest[1], "/".join(rest[2:]), query)
        if action == "preupload" and method == "POST":
            return self._preupload(repo, "/".join(rest[1:]), json.loads(body or b"{}"))
        if action == "commit" and method == "POST":
            return self._commit(repo, "/".join(rest[1:]), body, query)
        if action == "branch" and len(rest) >= 2:
            return self._branch(repo, method, "/".join(rest[1:]), json.loads(body or b"{}"))
        if action == "refs":
            return self._refs(repo)
        if action == "discussions":
            return self._discussions(repo, method, rest[1:], json.loads(body or b"{}") if body else {})
        return self._error(404, f"Unknown repo route {self.path}")

    def _model_info(self, repo: Repo, revision: str, head: bool) -> None:
        commit = self.state.resolve(repo, revision)
        if commit is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head=head)
        files = commit.files
        return self._json(
            200,
            {
                "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": commit.date,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": [{"rfilename": path} for path in sorted(files)],
                "usedStorage": sum(entry.size for entry in files.values()),
            },
            head=head,
        )

    def _tree(self, repo: Repo, revision: str, path: str, query: dict[str, list[str]]) -> None:
        commit = self.state.resolve(repo, revision)
        if commit is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        recursive = query.get("recursive", ["False"])[0].lower() in ("true", "1")
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        entries: list[dict[str, Any]] = []
        directories: set[str] = set()
        for file_path in sorted(commit.files):
            if not file_path.startswith(prefix):
                continue
            relative = file_path[len(prefix) :]
            parts = relative.split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    directories.add(prefix + "/".join(parts[:depth]))
            if not recursive and len(parts) > 1:
                continue
            entry = commit.files[file_path]
            item: dict[str, Any] = {"type": "file", "path": file_path, "size": entry.size, "oid": entry.blob_id}
            if entry.lfs_sha256:
                item["lfs"] = {"oid": entry.lfs_sha256, "size": entry.size,
                               "pointerSize": len(lfs_pointer(entry.lfs_sha256, entry.size))}
            entries.append(item)
        if prefix and not entries and not directories:
            return self._error(404, f"Entry {path} not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        folders = [{"type": "directory", "path": d, "size": 0, "oid": hashlib.sha1(d.encode()).hexdigest()}
                   for d in sorted(directories)]
        return self._json(200, folders + entries)

    def _refs(self, repo: Repo) -> None:
        branches = [{"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
                    for name, oid in repo.refs.items() if not name.startswith("refs/")]
        return self._json(200, {"branches": branches, "tags": [], "converts": []})

    def _branch(self, repo: Repo, method: str, branch: str, payload: dict[str, Any]) -> None:
        with self.state.lock:
            if method == "DELETE":
                repo.refs.pop(branch, None)
                return self._json(200, {})
            if branch in repo.refs:
                return self._error(409, f"Reference refs/heads/{branch} already exists")
            start = self.state.resolve(repo, payload.get("startingPoint") or "main")
            if start is None:
                return self._error(404, "Invalid starting point", "RevisionNotFound")
            repo.refs[branch] = start.oid
        return self._json(200, {})

    def _discussions(self, repo: Repo, method: str, rest: list[str], payload: dict[str, Any]) -> None:
        with self.state.lock:
            if method == "POST" and not rest:
                num = len(repo.discussions) + 1
                discussion = {
                    "num": num,
                    "title": payload.get("title", ""),
                    "status": "draft" if payload.get("pullRequest") else "open",
                    "isPullRequest": bool(payload.get("pullRequest")),
                    "createdAt": _now(),
                }
                repo.discussions.append(discussion)
                if discussion["isPullRequest"]:
                    repo.refs[f"refs/pr/{num}"] = repo.refs["main"]
                return self._json(200, {**discussion, "url": f"{self.endpoint}/{repo.repo_id}/discussions/{num}"})
            if method == "GET" and rest and rest[0].isdigit() and int(rest[0]) <= len(repo.discussions):
                discussion = repo.discussions[int(rest[0]) - 1]
                return self._json(200, {
                    **discussion,
                    "author": {"name": "user"},
                    "repo": {"name": repo.repo_id, "type": "model"},
                    "events": [],
                    "changes": {"base": "refs/heads/main"},
                    "filesWithConflicts": [],
                })
        return self._error(404, "Discussion not found")

    # ----------------------------------------------------------------- upload
    def _upload_mode(self, path: str, size: int, sample: bytes) -> str:
        mode = self.server.upload_mode
        if mode in ("regular", "lfs"):
            return mode
        if path.endswith(LFS_EXTENSIONS) or size >= 10 * 1024 * 1024 or b"\0" in sample:
            return "lfs"
        return "regular"

    def _preupload(self, repo: Repo, revision: str, payload: dict[str, Any]) -> None:
        commit = self.state.resolve(repo, revision)
        if commit is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        files = []
        for item in payload.get("files", []):
            sample = base64.b64decode(item.get("sample", ""))
            mode = self._upload_mode(item["path"], int(item["size"]), sample)
            existing = commit.files.get(item["path"])
            oid = None
            if existing is not None:
                oid = existing.lfs_sha256 if mode == "lfs" else existing.blob_id
            files.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return self._json(200, {"files": files, "commitOid": commit.oid})

    def _lfs_api(self, repo_id: str, action: str, body: bytes) -> None:
        repo = self._repo_or_404(repo_id)
        if repo is None:
            return None
        payload = json.loads(body or b"{}")
        if action == "batch":
            objects = []
            for obj in payload.get("objects", []):
                oid, size = obj["oid"], int(obj["size"])
                result: dict[str, Any] = {"oid": oid, "size": size}
                if not self.state.lfs_path(oid).exists():
                    result["authenticated"] = True
                    result["actions"] = {
                        "upload": self._upload_action(oid, size),
                        "verify": {"href": f"{self.endpoint}/{repo_id}.git/info/lfs/objects/verify", "header": {}},
                    }
                objects.append(result)
            return self._json(200, {"transfer": "basic", "objects": objects},
                              {"Content-Type": "application/vnd.git-lfs+json"})
        if action == "verify":
            path = self.state.lfs_path(payload.get("oid", ""))
            if path.exists() and path.stat().st_size == int(payload.get("size", -1)):
                return self._json(200, {"success": True})
            return self._error(404, f"LFS object {payload.get('oid')} not found or wrong size")
        return self._error(404, "unknown LFS action")

    def _upload_action(self, oid: str, size: int) -> dict[str, Any]:
        ticket = secrets.token_urlsafe(16)
        chunk = self.server.multipart_chunk_size
        entry: dict[str, Any] = {"oid": oid, "size": size, "parts": {}}
        with self.state.lock:
            self.state.tickets[ticket] = entry
        if chunk and size > chunk:
            count = -(-size // chunk)
            header: dict[str, str] = {"chunk_size": str(chunk)}
            for number in range(1, count + 1):
                header[str(number)] = f"{self.endpoint}/_lfs/part/{ticket}/{number}"
            entry["multipart"] = count
            return {"href": f"{self.endpoint}/_lfs/complete/{ticket}", "header": header}
        return {"href": f"{self.endpoint}/_lfs/upload/{ticket}", "header": {}}

    def _lfs_transfer(self, method: str, seg: list[str], body: bytes) -> None:
        """Unauthenticated upload URLs carrying one-time tickets (the role S3 plays on the real Hub)."""
        if len(seg) < 2:
            return self._error(404, "bad LFS transfer URL")
        kind, ticket = seg[0], seg[1]
        with self.state.lock:
            entry = self.state.tickets.get(ticket)
        if entry is None:
            return self._error(403, "invalid or already used upload ticket")
        if kind == "upload" and method == "PUT":
            with self.state.lock:
                self.state.tickets.pop(ticket, None)
            return self._store_lfs(entry, body)
        if kind == "part" and method == "PUT" and len(seg) == 3:
            number = int(seg[2])
            if number in entry["parts"]:
                return self._error(403, "part ticket already used")
            part_path = self.state.root / "tmp" / f"{ticket}.{number}"
            part_path.write_bytes(body)
            etag = hashlib.md5(body).hexdigest()
            entry["parts"][number] = (part_path, etag)
            return self._send(200, b"", {"ETag": f'"{etag}"'})
        if kind == "complete" and method == "POST":
            payload = json.loads(body or b"{}")
            parts = sorted(payload.get("parts", []), key=lambda p: p["partNumber"])
            if payload.get("oid") != entry["oid"] or len(parts) != entry.get("multipart"):
                return self._error(400, "multipart completion does not match the upload")
            data = bytearray()
            for part in parts:
                stored = entry["parts"].get(part["partNumber"])
                if stored is None or stored[1] != part["etag"].strip('"'):
                    return self._error(400, f"part {part['partNumber']} missing or wrong ETag")
                data += stored[0].read_bytes()
            with self.state.lock:
                self.state.tickets.pop(ticket, None)
            for path, _ in entry["parts"].values():
                path.unlink(missing_ok=True)
            return self._store_lfs(entry, bytes(data))
        return self._error(404, "bad LFS transfer request")

    def _store_lfs(self, entry: dict[str, Any], data: bytes) -> None:
        if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["oid"]:
            return self._error(400, "uploaded bytes do not match the announced sha256/size")
        path = self.state.lfs_path(entry["oid"])
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return self._send(200, b"", {"ETag": f'"{entry["oid"]}"'})

    def _commit(self, repo: Repo, revision: str, body: bytes, query: dict[str, list[str]]) -> None:
        with self.state.lock:
            if self.state.commit_failures:
                status = self.state.commit_failures.pop(0)
                return self._error(status, "Simulated Hub failure while committing (test hook)")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return self._error(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        create_pr = query.get("create_pr", ["0"])[0] in ("1", "true", "True")
        with self.state.lock:
            parent = self.state.resolve(repo, revision)
            if parent is None:
                return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            if header.get("parentCommit") and header["parentCommit"] != parent.oid:
                return self._error(412, "A commit has happened since. Please refresh and try again.")
            files = dict(parent.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                if key == "file":
                    if value.get("encoding", "base64") != "base64":
                        return self._error(400, f"unsupported encoding {value.get('encoding')}")
                    files[value["path"]] = self.state.store_blob(base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    path = self.state.lfs_path(value["oid"])
                    if value.get("algo", "sha256") != "sha256" or not path.exists():
                        return self._error(422, f"LFS object {value['oid']} for {value['path']} was not uploaded")
                    if path.stat().st_size != int(value["size"]):
                        return self._error(422, f"LFS object size mismatch for {value['path']}")
                    pointer = lfs_pointer(value["oid"], int(value["size"]))
                    files[value["path"]] = FileEntry(size=int(value["size"]), blob_id=git_blob_sha1(pointer),
                                                     blob_path=path, lfs_sha256=value["oid"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: f for p, f in files.items() if not p.startswith(prefix)}
                else:
                    return self._error(400, f"unsupported commit operation {key!r}")
            commit = self.state.make_commit(repo, parent.oid, header.get("summary", ""), files)
            pr_url = None
            target = unquote(revision)
            if create_pr:
                num = len(repo.discussions) + 1
                repo.discussions.append({"num": num, "title": header.get("summary", ""), "status": "open",
                                         "isPullRequest": True, "createdAt": _now()})
                target = f"refs/pr/{num}"
                pr_url = f"{self.endpoint}/{repo.repo_id}/discussions/{num}"
            elif target not in repo.refs and target.startswith("refs/heads/"):
                target = target[len("refs/heads/") :]
            if not create_pr and target not in repo.refs:
                return self._error(400, f"Cannot commit to {target}: not a branch")
            repo.refs[target] = commit.oid
        return self._json(200, {
            "commitUrl": f"{self.endpoint}/{repo.repo_id}/commit/{commit.oid}",
            "commitOid": commit.oid,
            "commitMessage": header.get("summary", ""),
            "pullRequestUrl": pr_url,
            "success": True,
        })

    # ----------------------------------------------------------------- download
    def _resolve(self, repo_id: str, revision: str, path: str, head: bool) -> None:
        repo = self._repo_or_404(repo_id, head)
        if repo is None:
            return None
        commit = self.state.resolve(repo, revision)
        if commit is None:
            return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head=head)
        entry = commit.files.get(path)
        if entry is None:
            return self._error(404, f"Entry {path} not found", "EntryNotFound", {"X-Repo-Commit": commit.oid},
                               head=head)
        etag = entry.lfs_sha256 or entry.blob_id
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        size = entry.size
        start, stop = 0, size
        status = 200
        range_header = self.headers.get("Range")
        if range_header:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", range_header.strip())
            if not match:
                return self._error(416, "bad Range")
            first, last = match.groups()
            if first == "":
                start, stop = max(0, size - int(last)), size
            else:
                start = int(first)
                stop = min(size, int(last) + 1) if last else size
            if start >= size > 0:
                return self._send(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{max(start, stop - 1)}/{size}"
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(stop - start))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if head:
            return None
        with open(entry.blob_path, "rb") as handle:
            handle.seek(start)
            remaining = stop - start
            while remaining > 0:
                block = handle.read(min(1 << 20, remaining))
                if not block:
                    break
                self.wfile.write(block)
                remaining -= len(block)
        return None


class HubHTTPServer(ThreadingHTTPServer):
    """The threading HTTP server holding the :class:`HubState` and the server options."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: HubState, upload_mode: str, multipart_chunk_size: int) -> None:
        super().__init__(address, HubRequestHandler)
        self.state = state
        self.upload_mode = upload_mode
        self.multipart_chunk_size = multipart_chunk_size

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def fail_commits(self, count: int = 1, status: int = 500) -> None:
        with self.state.lock:
            self.state.commit_failures.extend([status] * count)


class HubServer:
    """Start/stop wrapper running :class:`HubHTTPServer` in a daemon thread.

    Args:
        storage: folder for blobs, LFS objects and temporary parts.
        upload_mode: ``"auto"`` (LFS for weights/binaries/>=10 MB, regular otherwise), ``"regular"`` or ``"lfs"``.
        multipart_chunk_size: LFS objects larger than this are uploaded in parts of this size (0 disables).
        port: 0 picks a free port.
    """

    def __init__(self, storage: str | Path, upload_mode: str = "auto", multipart_chunk_size: int = 5 * 1024 * 1024,
                 port: int = 0) -> None:
        if upload_mode not in ("auto", "regular", "lfs"):
            raise ValueError(f"upload_mode must be auto, regular or lfs, got {upload_mode!r}")
        self.state = HubState(Path(storage))
        self.httpd = HubHTTPServer(("127.0.0.1", port), self.state, upload_mode, multipart_chunk_size)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.httpd.url

    @property
    def upload_mode(self) -> str:
        return self.httpd.upload_mode

    @upload_mode.setter
    def upload_mode(self, mode: str) -> None:
        self.httpd.upload_mode = mode

    def fail_commits(self, count: int = 1, status: int = 500) -> None:
        """Make the next ``count`` commit requests fail with HTTP ``status``."""
        self.httpd.fail_commits(count, status)

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="test-hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def file_bytes(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        """The stored bytes of ``path`` at ``revision`` (for assertions)."""
        repo = self.state.repos[repo_id]
        commit = self.state.resolve(repo, revision)
        assert commit is not None
        return commit.files[path].blob_path.read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the test Hub server on 127.0.0.1")
    parser.add_argument("--storage", required=True, help="folder for the server's data")
    parser.add_argument("--port", type=int, default=0, help="port (0 = any free port)")
    parser.add_argument("--upload-mode", default="auto", choices=["auto", "regular", "lfs"])
    parser.add_argument("--multipart-chunk-size", type=int, default=5 * 1024 * 1024)
    args = parser.parse_args()
    server = HubServer(args.storage, args.upload_mode, args.multipart_chunk_size, args.port)
    print(server.url, flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
        shutil.rmtree(Path(args.storage) / "tmp", ignore_errors=True)


if __name__ == "__main__":
    main()
