"""A local stand-in for the Hugging Face Hub endpoints that ``huggingface_hub`` and ``datasets``
call to create a dataset repo, commit files to it (regular and LFS uploads) and read it back.

Why: no hub is reachable from the test machines, yet the push path should run through the real
client libraries over real HTTP. Only what is listed in ``_route`` is served; anything else
answers 501 (and is recorded in ``unhandled``) so a gap shows as an error, never as success.
Xet storage is not served: clients must run with ``HF_HUB_DISABLE_XET=1`` (``env()`` sets it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".parquet", ".arrow", ".bin", ".safetensors", ".zip", ".gz")
_REPO = r"(?P<repo>[^/]+/[^/]+)"


@dataclass
class _Entry:
    sha256: str
    size: int
    lfs: bool
    git_oid: str


@dataclass
class _Repo:
    repo_id: str
    private: bool
    commits: list[tuple[str, dict[str, _Entry]]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)  # each commit's summary, in order

    @property
    def head(self) -> tuple[str, dict[str, _Entry]]:
        return self.commits[-1]

    def tree(self, revision: str) -> tuple[str, dict[str, _Entry]] | None:
        if revision == "main":
            return self.head
        return next((c for c in self.commits if c[0] == revision), None)


class HubServer:
    """``with HubServer(token="hf_x") as hub:`` ... ``hub.url``; ``hub.files(repo_id)`` holds what
    arrived. ``token``: the one write token accepted (None: any token, or none, may write)."""

    def __init__(self, token: str | None = "hf_standin_token", user: str = "standin-user") -> None:
        self.token = token
        self.user = user
        self.repos: dict[str, _Repo] = {}
        self.unhandled: list[str] = []
        self.requests: list[str] = []
        self._faults: list[list[Any]] = []
        self._lock = threading.Lock()
        self._dir: Path | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> str:
        self._dir = Path(tempfile.mkdtemp(prefix="synthpipe-hub-"))
        (self._dir / "blobs").mkdir()
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-standin", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> HubServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail(self, pattern: str, status: int = 500, times: int = 1) -> None:
        """The next ``times`` requests whose ``METHOD /path`` matches ``pattern`` (a regex searched
        for) answer ``status``: a failed upload, on purpose."""
        with self._lock:
            self._faults.append([re.compile(pattern), status, times])

    def _fault(self, request: str) -> int | None:
        with self._lock:
            for fault in self._faults:
                if fault[2] > 0 and fault[0].search(request):
                    fault[2] -= 1
                    return fault[1]
        return None

    def env(self, cache_dir: str | Path) -> dict[str, str]:
        """Environment for a process whose hub clients should talk to this stand-in (both
        libraries read these at import)."""
        cache = Path(cache_dir)
        return {"HF_ENDPOINT": self.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0",
                "HF_DATASETS_OFFLINE": "0", "HF_HOME": str(cache / "hf"),
                "HF_DATASETS_CACHE": str(cache / "datasets"), "HF_HUB_DISABLE_TELEMETRY": "1",
                "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"}

    # -- what arrived -----------------------------------------------------------------------
    def files(self, repo_id: str) -> dict[str, bytes]:
        """Path -> content at the head of ``repo_id``."""
        _, tree = self.repos[repo_id].head
        return {path: self._blob(e.sha256).read_bytes() for path, e in sorted(tree.items())}

    def lfs_paths(self, repo_id: str) -> list[str]:
        return sorted(p for p, e in self.repos[repo_id].head[1].items() if e.lfs)

    def _blob(self, sha256: str) -> Path:
        assert self._dir is not None
        return self._dir / "blobs" / sha256

    def _store(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self._blob(sha).write_bytes(data)
        return sha


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (quiet: tests read state)
        pass

    # -- plumbing ---------------------------------------------------------------------------
    def _send(self, status: int, body: Any = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        self._send(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message} if code else None)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else None

    def _can_write(self) -> bool:
        if self.hub.token is None:
            return True
        if self._token() != self.hub.token:
            self._error(401, "Invalid credentials in Authorization header")
            return False
        return True

    def _repo(self, repo_id: str, read: bool = True) -> _Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (read and repo.private and self.hub.token and self._token() != self.hub.token):
            self._error(404, f"Repository {repo_id} not found", "RepoNotFound")
            return None
        return repo

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET  # noqa: N815

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        self.hub.requests.append(f"{self.command} {path}")
        status = self.hub._fault(f"{self.command} {path}")
        if status is not None:
            self._body()
            return self._error(status, f"injected failure of {self.command} {path}")
        routes = [
            ("GET", r"/api/whoami-v2", self._whoami),
            ("POST", r"/api/repos/create", self._create),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("GET", rf"/api/datasets/{_REPO}(?:/revision/(?P<rev>[^/]+))?", self._info),
            ("POST", rf"/api/datasets/{_REPO}/preupload/(?P<rev>[^/]+)", self._preupload),
            ("POST", rf"/datasets/{_REPO}\.git/info/lfs/objects/batch", self._lfs_batch),
            ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})/(?P<size>\d+)", self._lfs_put),
            ("POST", rf"/api/datasets/{_REPO}/commit/(?P<rev>[^/]+)", self._commit),
            ("GET", rf"/api/datasets/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", self._tree),
            ("POST", rf"/api/datasets/{_REPO}/paths-info/(?P<rev>[^/]+)", self._paths_info),
            ("GET", rf"/datasets/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
            ("HEAD", rf"/datasets/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
        ]
        for method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if method == self.command and match:
                with self.hub._lock:
                    handler(query=query, **{k: v for k, v in match.groupdict().items()})
                return
        self.hub.unhandled.append(f"{self.command} {path}")
        self._body()
        self._error(501, f"the local hub stand-in does not implement {self.command} {path}")

    # -- account and repos ------------------------------------------------------------------
    def _whoami(self, query: dict) -> None:
        if self._token() is None or (self.hub.token and self._token() != self.hub.token):
            return self._error(401, "Invalid credentials in Authorization header")
        self._send(200, {"type": "user", "name": self.hub.user, "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"role": "write"}}})

    def _create(self, query: dict) -> None:
        body = json.loads(self._body() or b"{}")
        if not self._can_write():
            return
        if body.get("type") != "dataset":
            return self._error(501, "the local hub stand-in only hosts dataset repos")
        repo_id = f"{body.get('organization') or self.hub.user}/{body['name']}"
        url = f"{self.hub.url}/datasets/{repo_id}"
        if repo_id in self.hub.repos:
            return self._send(409, {"error": "You already created this dataset repo", "url": url})
        repo = _Repo(repo_id, body.get("visibility") == "private" or bool(body.get("private")))
        repo.commits.append((hashlib.sha1(f"init {repo_id}".encode()).hexdigest(), {}))
        self.hub.repos[repo_id] = repo
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, query: dict) -> None:
        """Checks that the card's front matter parses as a YAML mapping (the Hub checks more)."""
        import yaml

        body = json.loads(self._body() or b"{}")
        match = re.match(r"^---\n(.*?)\n---", body.get("content", ""), re.S)
        try:
            meta = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as exc:
            return self._send(400, {"errors": [{"message": f"front matter is not YAML: {exc}"}]})
        if meta is not None and not isinstance(meta, dict):
            return self._send(400, {"errors": [{"message": "front matter must be a mapping"}]})
        self._send(200, {"errors": [], "warnings": []})

    def _info(self, query: dict, repo: str, rev: str | None) -> None:
        found = self._repo(repo)
        if found is None:
            return
        tree = found.tree(rev or "main")
        if tree is None:
            return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        sha, files = tree
        self._send(200, {"id": repo, "_id": repo, "author": repo.split("/")[0], "sha": sha,
                         "private": found.private, "disabled": False, "gated": False, "downloads": 0,
                         "likes": 0, "tags": [], "lastModified": "2026-01-01T00:00:00.000Z",
                         "siblings": [{"rfilename": p} for p in sorted(files)]})

    # -- upload -----------------------------------------------------------------------------
    def _preupload(self, query: dict, repo: str, rev: str) -> None:
        body = json.loads(self._body() or b"{}")
        if not self._can_write() or self._repo(repo) is None:
            return
        files = [{"path": f["path"], "shouldIgnore": False,
                  "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) or f["size"] > 10_000_000
                  else "regular"} for f in body["files"]]
        self._send(200, {"files": files})

    def _lfs_batch(self, query: dict, repo: str) -> None:
        body = json.loads(self._body() or b"{}")
        if not self._can_write() or self._repo(repo) is None:
            return
        if body.get("operation") != "upload" or "basic" not in body.get("transfers", ["basic"]):
            return self._error(501, "the local hub stand-in serves basic LFS uploads only")
        objects = []
        for obj in body["objects"]:
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not self.hub._blob(obj["oid"]).exists():
                entry["actions"] = {"upload": {"href": f"{self.hub.url}/lfs-upload/{obj['oid']}/{obj['size']}"}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def _lfs_put(self, query: dict, oid: str, size: str) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid or len(data) != int(size):
            return self._error(400, "LFS upload does not match its announced oid and size")
        self.hub._store(data)
        self._send(200, {})

    def _commit(self, query: dict, repo: str, rev: str) -> None:
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if not self._can_write():
            return
        found = self._repo(repo)
        if found is None:
            return
        if rev != "main" or query.get("create_pr"):
            return self._error(501, "the local hub stand-in commits to main only (no branches, no PRs)")
        _, tree = found.head
        tree = dict(tree)
        summary = ""
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "header":
                summary = str(value.get("summary") or "")
                continue
            if key == "file":
                data = base64.b64decode(value["content"])
                tree[value["path"]] = _Entry(self.hub._store(data), len(data), False, _git_oid(data))
            elif key == "lfsFile":
                if not self.hub._blob(value["oid"]).exists():
                    return self._error(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                tree[value["path"]] = _Entry(value["oid"], value["size"], True,
                                             _git_oid(_pointer(value["oid"], value["size"])))
            elif key == "deletedFile":
                if tree.pop(value["path"], None) is None:
                    return self._error(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                tree = {p: e for p, e in tree.items() if not p.startswith(prefix)}
            else:
                return self._error(501, f"the local hub stand-in does not implement commit operation {key!r}")
        sha = hashlib.sha1(json.dumps([found.head[0], sorted((p, e.sha256) for p, e in tree.items())])
                           .encode()).hexdigest()
        found.commits.append((sha, tree))
        found.messages.append(summary)
        self._send(200, {"commitUrl": f"{self.hub.url}/datasets/{repo}/commit/{sha}", "commitOid": sha,
                         "pullRequestUrl": None})

    # -- download ---------------------------------------------------------------------------
    def _listing(self, files: dict[str, _Entry], paths: list[str], recursive: bool) -> list[dict]:
        out: list[dict] = []
        dirs: set[str] = set()
        for wanted in paths:
            prefix = wanted.strip("/") + "/" if wanted.strip("/") else ""
            if wanted and wanted in files:
                out.append(self._file_entry(wanted, files[wanted]))
                continue
            for path, entry in sorted(files.items()):
                if not path.startswith(prefix):
                    continue
                rest = path[len(prefix):].split("/")
                for depth in range(1, len(rest)):
                    if depth > 1 and not recursive:
                        break
                    d = prefix + "/".join(rest[:depth])
                    if d not in dirs:
                        dirs.add(d)
                        out.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0,
                                    "path": d})
                if recursive or len(rest) == 1:
                    out.append(self._file_entry(path, entry))
        return out

    @staticmethod
    def _file_entry(path: str, entry: _Entry) -> dict:
        item: dict[str, Any] = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
        if entry.lfs:
            item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": len(_pointer(entry.sha256, 0))}
        return item

    def _tree(self, query: dict, repo: str, rev: str, sub: str | None) -> None:
        found = self._repo(repo)
        tree = found.tree(rev) if found else None
        if found is None:
            return
        if tree is None:
            return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        sub = (sub or "").strip("/")
        files = tree[1]
        if sub and sub not in files and not any(p.startswith(sub + "/") for p in files):
            return self._error(404, f"{sub} does not exist on {rev}", "EntryNotFound")
        recursive = query.get("recursive", ["false"])[0] in ("true", "True", "1")
        self._send(200, self._listing(files, [sub], recursive))

    def _paths_info(self, query: dict, repo: str, rev: str) -> None:
        form = parse_qs(self._body().decode())
        found = self._repo(repo)
        tree = found.tree(rev) if found else None
        if found is None:
            return
        if tree is None:
            return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        files, out = tree[1], []
        for wanted in form.get("paths", []):
            if wanted in files:
                out.append(self._file_entry(wanted, files[wanted]))
            elif any(p.startswith(wanted.rstrip("/") + "/") for p in files):
                out.append({"type": "directory", "oid": hashlib.sha1(wanted.encode()).hexdigest(), "size": 0,
                            "path": wanted.rstrip("/")})
        self._send(200, out)

    def _resolve(self, query: dict, repo: str, rev: str, file: str) -> None:
        found = self._repo(repo)
        tree = found.tree(rev) if found else None
        if found is None:
            return
        if tree is None:
            return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        sha, files = tree
        entry = files.get(file)
        if entry is None:
            return self._error(404, f"Entry not found: {file}", "EntryNotFound")
        data = self.hub._blob(entry.sha256).read_bytes()
        headers = {"X-Repo-Commit": sha, "ETag": f'"{entry.git_oid}"', "Accept-Ranges": "bytes"}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if ranged:
            start = int(ranged.group(1))
            end = min(int(ranged.group(2)) if ranged.group(2) else len(data) - 1, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start:end + 1], headers, "application/octet-stream")
        self._send(200, data, headers, "application/octet-stream")
