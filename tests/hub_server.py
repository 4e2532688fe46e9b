"""A small Hugging Face Hub endpoint on 127.0.0.1 for the tests: the part of the Hub API that huggingface_hub uses.

Covered: create repo, create branch, validate-yaml, whoami, pre-upload (always answers ``regular``, so file contents
travel inline in the commit and neither LFS nor Xet is used), commit (NDJSON), repo info (at a revision), file tree,
and resolve (``HEAD``/``GET`` of a file at a branch or commit, with ``X-Repo-Commit``, ``ETag`` and
``Content-Length``). Every commit is kept, so an older commit stays reachable by its sha.

Not the real Hub: no LFS, no pull requests, no pagination (one page), any non-empty bearer token is accepted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_oid(content: bytes) -> str:
    """The git blob sha1 that the Hub reports as a regular file's ``oid`` and ``ETag``."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    sha: str
    parent: str | None
    message: str
    files: dict[str, bytes]
    date: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        return self.commits.get(revision)

    def add_commit(self, branch: str, message: str, files: dict[str, bytes]) -> Commit:
        parent = self.branches.get(branch)
        digest = hashlib.sha1(f"{parent}\n{message}\n{len(self.commits)}".encode())
        for path in sorted(files):
            digest.update(path.encode() + git_blob_oid(files[path]).encode())
        # The client parses dates in exactly this form (milliseconds, "Z").
        date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        commit = Commit(digest.hexdigest(), parent, message, files, date)
        self.commits[commit.sha] = commit
        self.branches[branch] = commit.sha
        return commit


class FakeHub:
    """The Hub's state and an HTTP server that serves it from a background thread.

    Use as a context manager; ``endpoint`` is the value for ``HF_ENDPOINT``.
    """

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def commit_messages(self, repo_id: str, branch: str = "main") -> list[str]:
        """Messages from the branch head back to the first commit."""
        repo = self.repos[repo_id]
        messages, sha = [], repo.branches.get(branch)
        while sha is not None:
            messages.append(repo.commits[sha].message)
            sha = repo.commits[sha].parent
        return messages


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args) -> None:  # keep pytest output clean
            pass

        # -------------------------------------------------------------- plumbing
        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _error(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None) -> None:
            extra = {"X-Error-Message": message, **(headers or {})}
            if code:
                extra["X-Error-Code"] = code
            self._json(status, {"error": message}, extra)

        def _authorized(self) -> bool:
            value = self.headers.get("Authorization", "")
            return value.startswith("Bearer ") and len(value) > len("Bearer ")

        def _repo(self, repo_id: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and not self._authorized()):
                self._error(404, "RepoNotFound", "Repository not found")
                return None
            return repo

        def _commit(self, repo: Repo, revision: str) -> Commit | None:
            commit = repo.resolve(revision)
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return commit

        # -------------------------------------------------------------- dispatch
        def _dispatch(self) -> None:
            parts = [unquote(part) for part in urlsplit(self.path).path.strip("/").split("/")]
            with hub.lock:
                hub.requests.append((self.command, self.path))
                handled = self._route(parts)
                if not handled:
                    hub.unhandled.append((self.command, self.path))
                    self._error(404, None, f"not implemented by the test hub: {self.command} {self.path}")

        def do_GET(self) -> None:
            self._dispatch()

        def do_HEAD(self) -> None:
            self._dispatch()

        def do_POST(self) -> None:
            self._dispatch()

        def _route(self, parts: list[str]) -> bool:
            method = self.command
            if parts[:1] == ["api"]:
                rest = parts[1:]
                if method == "POST" and rest == ["repos", "create"]:
                    return self._create_repo()
                if method == "POST" and rest == ["validate-yaml"]:
                    return self._validate_yaml()
                if method == "GET" and rest == ["agent-harnesses"]:  # the client's agent-detection registry
                    self._json(200, {"standardEnvVars": [], "harnesses": {}})
                    return True
                if method == "GET" and rest[:1] == ["whoami-v2"]:
                    if not self._authorized():
                        self._error(401, None, "Invalid credentials in Authorization header")
                    else:
                        self._json(200, {"type": "user", "name": "tester", "orgs": [], "auth": {}})
                    return True
                if rest[:1] == ["models"] and len(rest) >= 3:
                    repo_id, action, args = f"{rest[1]}/{rest[2]}", rest[3:4], rest[4:]
                    if method == "GET" and not action:
                        return self._repo_info(repo_id, "main")
                    if method == "GET" and action == ["revision"] and args:
                        return self._repo_info(repo_id, args[0])
                    if method == "GET" and action == ["tree"] and args:
                        return self._tree(repo_id, args[0], "/".join(args[1:]))
                    if method == "POST" and action == ["preupload"] and args:
                        return self._preupload(repo_id, args[0])
                    if method == "POST" and action == ["commit"] and args:
                        return self._create_commit(repo_id, args[0])
                    if method == "POST" and action == ["branch"] and args:
                        return self._create_branch(repo_id, args[0])
                return False
            if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            return False

        # -------------------------------------------------------------- routes
        def _create_repo(self) -> bool:
            if not self._authorized():
                self._error(401, None, "Invalid username or password.")
                return True
            payload = json.loads(self._body() or b"{}")
            repo_id = f"{payload.get('organization') or 'tester'}/{payload['name']}"
            if repo_id in hub.repos:
                # The Hub's 409 carries the url too; the client reads it when exist_ok=True.
                message = "You already created this model repo"
                self._json(409, {"error": message, "url": f"{hub.endpoint}/{repo_id}"}, {"X-Error-Message": message})
                return True
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            repo = hub.repos[repo_id] = Repo(repo_id, private)
            repo.add_commit("main", "initial commit", {".gitattributes": GITATTRIBUTES})
            self._json(200, {"url": f"{hub.endpoint}/{repo_id}", "name": repo_id})
            return True

        def _validate_yaml(self) -> bool:
            content = json.loads(self._body() or b"{}").get("content", "")
            if content.startswith("---"):
                try:
                    yaml.safe_load(content.split("---", 2)[1])
                except yaml.YAMLError as error:
                    self._json(400, {"errors": [{"message": str(error)}], "warnings": []})
                    return True
            self._json(200, {"errors": [], "warnings": []})
            return True

        def _repo_info(self, repo_id: str, revision: str) -> bool:
            repo = self._repo(repo_id)
            commit = repo and self._commit(repo, revision)
            if commit:
                self._json(
                    200,
                    {
                        "id": repo_id,
                        "modelId": repo_id,
                        "sha": commit.sha,
                        "private": repo.private,
                        "lastModified": commit.date,
                        "tags": [],
                        "siblings": [{"rfilename": path} for path in sorted(commit.files)],
                    },
                )
            return True

        def _tree(self, repo_id: str, revision: str, folder: str) -> bool:
            repo = self._repo(repo_id)
            commit = repo and self._commit(repo, revision)
            if commit:
                prefix = f"{folder.rstrip('/')}/" if folder else ""
                entries = [
                    {"type": "file", "path": path, "size": len(content), "oid": git_blob_oid(content)}
                    for path, content in sorted(commit.files.items())
                    if path.startswith(prefix)
                ]
                self._json(200, entries)
            return True

        def _preupload(self, repo_id: str, revision: str) -> bool:
            repo = self._repo(repo_id)
            if repo is None:
                return True
            existing = repo.resolve(revision)
            files = []
            for item in json.loads(self._body())["files"]:
                old = existing.files.get(item["path"]) if existing else None
                files.append(
                    {
                        "path": item["path"],
                        "uploadMode": "regular",  # contents come inline in the commit: no LFS, no Xet
                        "shouldIgnore": False,
                        "oid": git_blob_oid(old) if old is not None else None,
                    }
                )
            self._json(200, {"files": files, "commitOid": existing.sha if existing else None})
            return True

        def _create_commit(self, repo_id: str, branch: str) -> bool:
            body = self._body()
            if not self._authorized():
                self._error(401, None, "Invalid credentials in Authorization header")
                return True
            repo = self._repo(repo_id)
            if repo is None:
                return True
            if branch not in repo.branches:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
                return True
            files = dict(repo.commits[repo.branches[branch]].files)
            message = ""
            for line in body.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    message = value["summary"]
                    parent = value.get("parentCommit")
                    if parent is not None and parent != repo.branches[branch]:
                        self._error(412, None, "A commit has happened since. Please refresh and try again.")
                        return True
                elif key == "file":
                    if value.get("encoding") != "base64":
                        self._error(400, None, f"unsupported encoding {value.get('encoding')!r}")
                        return True
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {path: data for path, data in files.items() if not path.startswith(prefix)}
                else:  # lfsFile: this hub never asks for LFS, so a client sending it took a path we do not serve
                    self._error(400, None, f"the test hub does not accept {key!r} operations")
                    return True
            commit = repo.add_commit(branch, message, files)
            self._json(
                200,
                {
                    "success": True,
                    "commitOid": commit.sha,
                    "commitUrl": f"{hub.endpoint}/{repo_id}/commit/{commit.sha}",
                    "commitMessage": message,
                    "pullRequestUrl": None,
                },
            )
            return True

        def _create_branch(self, repo_id: str, branch: str) -> bool:
            body = json.loads(self._body() or b"{}")
            if not self._authorized():
                self._error(401, None, "Invalid credentials in Authorization header")
                return True
            repo = self._repo(repo_id)
            if repo is None:
                return True
            if branch in repo.branches:
                self._error(409, None, f"Reference {branch} already exists")
                return True
            start = self._commit(repo, body.get("startingPoint") or "main")
            if start is not None:
                repo.branches[branch] = start.sha
                self._json(200, {})
            return True

        def _resolve(self, repo_id: str, revision: str, path: str) -> bool:
            repo = self._repo(repo_id)
            commit = repo and self._commit(repo, revision)
            if not commit:
                return True
            if path not in commit.files:
                self._error(404, "EntryNotFound", f"{path} does not exist", {"X-Repo-Commit": commit.sha})
                return True
            content = commit.files[path]
            oid = git_blob_oid(content)
            headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{oid}"', "Content-Type": "application/octet-stream"}
            self._send(200, content, headers)
            return True

    return Handler
