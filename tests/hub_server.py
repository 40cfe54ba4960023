"""An in-process, Hugging Face Hub-compatible HTTP server for tests (standard library only).

It implements the part of the Hub's HTTP API that ``huggingface_hub`` (with Xet disabled), timm and
transformers use to create repositories, upload folders through the plain LFS protocol, list them
and download files:

- ``GET /api/whoami-v2``
- ``POST /api/repos/create`` (409 with a JSON ``url`` for an existing repository)
- ``GET /api/models`` (``author``, ``search``, ``filter``, ``limit``), ``GET /api/models/{id}`` and
  ``GET /api/models/{id}/revision/{rev}`` (``sha``, ``siblings``, ``private``, ``tags``, ``cardData``)
- ``GET /api/models/{id}/tree/{rev}[/{path}]`` (``recursive``)
- ``POST /api/models/{id}/preupload/{rev}``, ``POST /{id}.git/info/lfs/objects/batch`` with its
  ``PUT``/verify actions, ``POST /api/models/{id}/commit/{rev}`` (NDJSON)
- ``HEAD``/``GET /{id}/resolve/{rev}/{path}`` (``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``,
  ``X-Linked-Size``, ``Range``)
- ``POST /api/validate-yaml`` (checks that a README's metadata block is delimited by ``---`` lines)

Authentication: ``Authorization: Bearer <token>`` must name a token given to :class:`HubServer`;
an unknown token gets 401 ``Invalid credentials in Authorization header`` (as the Hub answers), writes
without a token get 401, and private repositories are visible to their namespace's members only.

Faults for tests: :meth:`HubServer.tamper` changes the bytes served for one file (the stored file
stays intact), and :meth:`HubServer.cut_transfer` closes the connection after part of a body.

Two protocol habits the client relies on are kept: every request body is read in full, even when
answering an error, and no body is ever sent with a HEAD answer.
"""
from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

__all__ = ['HubServer', 'StoredFile', 'Commit', 'Repo']

# Paths stored through LFS, as the Hub's default .gitattributes does (plus anything binary or large).
LFS_PATTERNS = ('*.safetensors', '*.bin', '*.pt', '*.pth', '*.ckpt', '*.onnx', '*.png', '*.jpg', '*.gz', '*.zip')
LFS_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = ''.join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a regular file."""
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


@dataclass
class StoredFile:
    """One file of one commit."""

    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def etag(self) -> str:
        """The Hub's ETag: sha256 for LFS files, git blob id for regular ones."""
        return self.sha256 if self.lfs else git_blob_sha1(self.data)


@dataclass
class Commit:
    sha: str
    message: str
    files: dict[str, StoredFile]
    parent: str | None
    created: float = field(default_factory=time.time)


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        revision = urllib.parse.unquote(revision)
        sha = self.refs.get(revision, revision)
        return self.commits.get(sha)


class HubError(Exception):
    """An HTTP error answer: status, X-Error-Code and message."""

    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


class HubServer:
    """A Hub-compatible server on ``127.0.0.1:<free port>``, run in a daemon thread.

    Args:
        tokens: ``{token: (user_name, [org, ...])}`` accepted as ``Authorization: Bearer`` tokens.

    Attributes:
        endpoint: ``http://127.0.0.1:<port>``.
        repos: repositories by id.
        requests: ``(method, path, authorization header or None)`` for every request, in order.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, tokens: dict[str, tuple[str, list[str]]] | None = None):
        self.tokens = dict(tokens or {})
        self.repos: dict[str, Repo] = {}
        self.lfs_store: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.request_bodies: list[bytes] = []
        self.lock = threading.RLock()
        self._tamper: dict[tuple[str, str], Callable[[bytes], bytes]] = {}
        self._cut: dict[tuple[str, str], int] = {}
        self._counter = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ''

    # ---- lifecycle
    def start(self) -> HubServer:
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self._httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name='hub-server', daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- fault injection and inspection
    def tamper(self, repo_id: str, path: str, fn: Callable[[bytes], bytes] | None) -> None:
        """Serve ``fn(data)`` (with matching size headers) instead of the stored bytes of ``path``, as if the
        Hub held a damaged file (None: stop tampering)."""
        with self.lock:
            if fn is None:
                self._tamper.pop((repo_id, path), None)
            else:
                self._tamper[(repo_id, path)] = fn

    def cut_transfer(self, repo_id: str, path: str, nbytes: int | None) -> None:
        """Announce the full size of ``path`` but close the connection after ``nbytes`` body bytes."""
        with self.lock:
            if nbytes is None:
                self._cut.pop((repo_id, path), None)
            else:
                self._cut[(repo_id, path)] = nbytes

    def files(self, repo_id: str, revision: str = 'main') -> dict[str, bytes]:
        """The files of a repository at a revision."""
        commit = self.repos[repo_id].resolve(revision)
        return {p: f.data for p, f in commit.files.items()}

    def commit_count(self, repo_id: str) -> int:
        return len(self.repos[repo_id].commits)

    # ---- state changes (called under the lock)
    def _new_sha(self, seed: str) -> str:
        self._counter += 1
        return hashlib.sha1(f"{seed}:{self._counter}:{time.time_ns()}".encode()).hexdigest()

    def _create_repo(self, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_id, private)
        sha = self._new_sha(repo_id)
        repo.commits[sha] = Commit(sha, 'initial commit', {'.gitattributes': StoredFile(GITATTRIBUTES, False)}, None)
        repo.refs['main'] = sha
        self.repos[repo_id] = repo
        return repo


def _lfs_for(path: str, size: int, sample: bytes) -> bool:
    name = path.rsplit('/', 1)[-1]
    return size >= LFS_SIZE or b'\0' in sample or any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS)


_RESOLVE = re.compile(r'^/(?:models/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$')
_API_REPO = re.compile(r'^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$')
_TREE = re.compile(r'^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$')
_PREUPLOAD = re.compile(r'^/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)$')
_COMMIT = re.compile(r'^/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)$')
_LFS_BATCH = re.compile(r'^/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$')
_LFS_PUT = re.compile(r'^/_lfs/(?P<oid>[0-9a-f]{64})$')
_LFS_VERIFY = re.compile(r'^/_lfs/(?P<oid>[0-9a-f]{64})/verify$')


class _Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    hub: HubServer

    def log_message(self, format, *args):  # keep test output quiet
        pass

    # ---- plumbing
    def _read_body(self) -> bytes:
        if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
            chunks = []
            while True:
                size_line = self.rfile.readline().strip()
                size = int(size_line.split(b';')[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b'\r\n', b'\n', b''):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b''.join(chunks)
        length = int(self.headers.get('Content-Length') or 0)
        return self.rfile.read(length) if length else b''

    def _send(self, status: int, body: bytes = b'', headers: dict | None = None,
              content_type: str = 'application/json') -> None:
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != 'HEAD' and body:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, e: HubError) -> None:
        headers = {'X-Error-Message': e.message}
        if e.code:
            headers['X-Error-Code'] = e.code
        self._json(e.status, {'error': e.message, **e.extra}, headers)

    def _user(self, required: bool) -> tuple[str, list[str]] | None:
        auth = self.headers.get('Authorization')
        if not auth:
            if required:
                raise HubError(401, 'You must be authenticated to access this resource')
            return None
        token = auth[7:] if auth.startswith('Bearer ') else auth
        user = self.hub.tokens.get(token)
        if user is None:
            raise HubError(401, 'Invalid credentials in Authorization header')
        return user

    def _repo(self, repo_id: str, write: bool = False) -> Repo:
        user = self._user(required=write)
        repo = self.hub.repos.get(repo_id)
        allowed = user is not None and repo_id.split('/')[0] in (user[0], *user[1])
        if repo is None or (repo.private and not allowed):
            raise HubError(404, f"Repository {repo_id} not found", 'RepoNotFound')
        if write and not allowed:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", 'RevisionNotFound')
        return commit

    def _dispatch(self) -> None:
        body = self._read_body()
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        query = urllib.parse.parse_qs(url.query)
        with self.hub.lock:
            self.hub.requests.append((self.command, path, self.headers.get('Authorization')))
            self.hub.request_bodies.append(body)
        try:
            with self.hub.lock:
                handled = self._route(path, query, body)
            if handled is not None:
                handled()
        except HubError as e:
            self._error(e)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # ---- routes; each returns None after answering, or a callable to stream outside the lock
    def _route(self, path: str, query: dict, body: bytes):
        cmd = self.command
        if cmd in ('GET', 'HEAD') and (m := _RESOLVE.match(path)):
            return self._resolve(m['repo'], m['rev'], m['path'])
        if cmd == 'GET' and path == '/api/whoami-v2':
            name, orgs = self._user(required=True)
            return self._json(200, {'type': 'user', 'name': name, 'fullname': name,
                                    'orgs': [{'name': o, 'type': 'org'} for o in orgs],
                                    'auth': {'type': 'access_token', 'accessToken': {'role': 'write'}}})
        if cmd == 'POST' and path == '/api/repos/create':
            return self._create(json.loads(body or b'{}'))
        if cmd == 'GET' and path == '/api/models':
            return self._list_models(query)
        if cmd == 'GET' and (m := _API_REPO.match(path)):
            return self._model_info(m['repo'], m['rev'] or 'main')
        if cmd == 'GET' and (m := _TREE.match(path)):
            return self._tree(m['repo'], m['rev'], (m['path'] or '').strip('/'), query)
        if cmd == 'POST' and (m := _PREUPLOAD.match(path)):
            return self._preupload(m['repo'], m['rev'], json.loads(body))
        if cmd == 'POST' and (m := _LFS_BATCH.match(path)):
            return self._lfs_batch(m['repo'], json.loads(body))
        if cmd == 'PUT' and (m := _LFS_PUT.match(path)):
            return self._lfs_put(m['oid'], body)
        if cmd == 'POST' and (m := _LFS_VERIFY.match(path)):
            return self._lfs_verify(m['oid'], json.loads(body))
        if cmd == 'POST' and (m := _COMMIT.match(path)):
            return self._create_commit(m['repo'], m['rev'], body)
        if cmd == 'POST' and path == '/api/validate-yaml':
            return self._validate_yaml(json.loads(body))
        raise HubError(404, f"Not found: {cmd} {path}")

    def _create(self, payload: dict):
        name, orgs = self._user(required=True)
        if payload.get('type', 'model') not in (None, 'model'):
            raise HubError(400, f"only model repositories are served, got type {payload.get('type')!r}")
        namespace = payload.get('organization') or name
        if namespace not in (name, *orgs):
            raise HubError(403, f"You don't have the rights to create a model under the namespace {namespace!r}")
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{self.hub.endpoint}/{repo_id}"
        if repo_id in self.hub.repos:
            raise HubError(409, 'You already created this model repo', extra={'url': url})
        private = payload.get('visibility') == 'private' or bool(payload.get('private'))
        self.hub._create_repo(repo_id, private)
        return self._json(200, {'url': url, 'name': repo_id, 'id': repo_id})

    def _info(self, repo: Repo, commit: Commit) -> dict:
        card = commit.files.get('README.md')
        info = {'id': repo.repo_id, 'modelId': repo.repo_id, 'author': repo.repo_id.split('/')[0],
                'sha': commit.sha, 'private': repo.private, 'disabled': False, 'gated': False,
                'lastModified': time.strftime('%Y-%m-%dT%H:%M:%S.000Z', time.gmtime(commit.created)),
                'siblings': [{'rfilename': p} for p in sorted(commit.files)], 'tags': [], 'downloads': 0,
                'likes': 0}
        if card is not None:
            info['tags'] = _card_list(card.data.decode('utf-8', 'replace'), 'tags')
            library = _card_scalar(card.data.decode('utf-8', 'replace'), 'library_name')
            if library:
                info['library_name'] = library
        return info

    def _list_models(self, query: dict):
        user = self._user(required=False)
        author = query.get('author', [None])[0]
        search = query.get('search', [None])[0]
        filters = query.get('filter', [])
        limit = int(query.get('limit', [1000])[0])
        out = []
        for repo_id, repo in sorted(self.hub.repos.items()):
            visible = not repo.private or (user is not None and repo_id.split('/')[0] in (user[0], *user[1]))
            if not visible or (author and repo_id.split('/')[0] != author) or (search and search not in repo_id):
                continue
            info = self._info(repo, repo.resolve('main'))
            if any(f not in info['tags'] and f != info.get('library_name') for f in filters):
                continue
            out.append(info)
        return self._json(200, out[:limit])

    def _model_info(self, repo_id: str, revision: str):
        repo = self._repo(repo_id)
        return self._json(200, self._info(repo, self._commit(repo, revision)))

    def _tree(self, repo_id: str, revision: str, prefix: str, query: dict):
        repo = self._repo(repo_id)
        commit = self._commit(repo, revision)
        recursive = query.get('recursive', ['false'])[0].lower() in ('1', 'true')
        base = prefix + '/' if prefix else ''
        entries, dirs = [], set()
        for p, f in sorted(commit.files.items()):
            if not p.startswith(base):
                continue
            rest = p[len(base):]
            parts = rest.split('/')
            for i in range(1, len(parts) if recursive else min(2, len(parts))):
                dirs.add(base + '/'.join(parts[:i]))
            if not recursive and len(parts) > 1:
                continue
            entry = {'type': 'file', 'path': p, 'size': len(f.data), 'oid': git_blob_sha1(f.data)}
            if f.lfs:
                entry['lfs'] = {'oid': f.sha256, 'size': len(f.data), 'pointerSize': 134}
            entries.append(entry)
        if prefix and not entries and not dirs:
            raise HubError(404, f"{prefix} does not exist on {revision}", 'EntryNotFound')
        entries += [{'type': 'directory', 'path': d, 'size': 0, 'oid': hashlib.sha1(d.encode()).hexdigest()}
                    for d in sorted(dirs)]
        return self._json(200, entries)

    def _preupload(self, repo_id: str, revision: str, payload: dict):
        repo = self._repo(repo_id, write=True)
        commit = self._commit(repo, revision)
        out = []
        for f in payload['files']:
            sample = base64.b64decode(f.get('sample', ''))
            existing = commit.files.get(f['path'])
            entry = {'path': f['path'], 'uploadMode': 'lfs' if _lfs_for(f['path'], f['size'], sample) else 'regular',
                     'shouldIgnore': False}
            if existing is not None:
                entry['oid'] = existing.sha256 if existing.lfs else git_blob_sha1(existing.data)
            out.append(entry)
        return self._json(200, {'files': out, 'commitOid': commit.sha})

    def _lfs_batch(self, repo_id: str, payload: dict):
        self._repo(repo_id, write=True)
        if payload.get('operation') != 'upload':
            raise HubError(400, f"only 'upload' batches are served, got {payload.get('operation')!r}")
        objects = []
        for obj in payload['objects']:
            entry = {'oid': obj['oid'], 'size': obj['size'], 'authenticated': True}
            if obj['oid'] not in self.hub.lfs_store:
                href = f"{self.hub.endpoint}/_lfs/{obj['oid']}"
                entry['actions'] = {'upload': {'href': href, 'header': {}},
                                    'verify': {'href': href + '/verify', 'header': {}}}
            objects.append(entry)
        return self._json(200, {'transfer': 'basic', 'objects': objects},
                          {'Content-Type': 'application/vnd.git-lfs+json'})

    def _lfs_put(self, oid: str, body: bytes):
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"uploaded content does not match oid {oid}")
        self.hub.lfs_store[oid] = body
        return self._send(200)

    def _lfs_verify(self, oid: str, payload: dict):
        data = self.hub.lfs_store.get(oid)
        if data is None or len(data) != payload.get('size'):
            raise HubError(404, f"LFS object {oid} not found or of the wrong size")
        return self._json(200, {})

    def _create_commit(self, repo_id: str, revision: str, body: bytes):
        repo = self._repo(repo_id, write=True)
        revision = urllib.parse.unquote(revision)
        parent = self._commit(repo, revision)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get('key') != 'header':
            raise HubError(400, 'commit payload must start with a header line')
        header = lines[0]['value']
        if header.get('parentCommit') and header['parentCommit'] != parent.sha:
            raise HubError(412, 'A commit has happened since. Please refresh and try again.')
        files = dict(parent.files)
        for item in lines[1:]:
            key, value = item['key'], item['value']
            if key == 'file':
                data = base64.b64decode(value['content']) if value.get('encoding') == 'base64' \
                    else value['content'].encode()
                if b'\0' in data[:1024]:
                    raise HubError(400, f"binary file {value['path']} must be uploaded through LFS")
                files[value['path']] = StoredFile(data, False)
            elif key == 'lfsFile':
                data = self.hub.lfs_store.get(value['oid'])
                if data is None:
                    raise HubError(400, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                files[value['path']] = StoredFile(data, True)
            elif key == 'deletedFile':
                if files.pop(value['path'], None) is None:
                    raise HubError(404, f"cannot delete {value['path']}: no such file", 'EntryNotFound')
            elif key == 'deletedFolder':
                folder = value['path'].rstrip('/') + '/'
                for p in [p for p in files if p.startswith(folder)]:
                    del files[p]
            else:
                raise HubError(400, f"unsupported commit operation {key!r}")
        if 'README.md' in files:
            errors = _metadata_errors(files['README.md'].data.decode('utf-8', 'replace'))
            if errors:
                raise HubError(400, '; '.join(errors))
        sha = self.hub._new_sha(repo_id)
        repo.commits[sha] = Commit(sha, header.get('summary', ''), files, parent.sha)
        repo.refs['main' if revision == parent.sha else revision] = sha
        return self._json(200, {'commitUrl': f"{self.hub.endpoint}/{repo_id}/commit/{sha}", 'commitOid': sha,
                                'pullRequestUrl': None, 'success': True})

    def _validate_yaml(self, payload: dict):
        errors = _metadata_errors(payload.get('content', ''))
        status = 400 if errors else 200
        return self._json(status, {'errors': [{'message': e} for e in errors], 'warnings': []})

    def _resolve(self, repo_id: str, revision: str, path: str):
        repo = self._repo(repo_id)
        commit = self._commit(repo, revision)
        stored = commit.files.get(path)
        if stored is None:
            raise HubError(404, f"Entry not found: {path}", 'EntryNotFound')
        data = stored.data
        tamper = self.hub._tamper.get((repo_id, path))
        if tamper is not None:
            data = tamper(data)
        cut = self.hub._cut.get((repo_id, path))
        headers = {'X-Repo-Commit': commit.sha, 'ETag': f'"{stored.etag}"', 'Accept-Ranges': 'bytes'}
        if stored.lfs:
            headers['X-Linked-Etag'] = f'"{stored.sha256}"'
            headers['X-Linked-Size'] = str(len(data))
        status, start, end = 200, 0, len(data)
        rng = self.headers.get('Range')
        if rng and (m := re.fullmatch(r'bytes=(\d*)-(\d*)', rng.strip())):
            start = int(m[1]) if m[1] else 0
            end = int(m[2]) + 1 if m[2] else len(data)
            if start >= len(data) and len(data):
                raise HubError(416, f"Range {rng} not satisfiable for {len(data)} bytes")
            status = 206
            headers['Content-Range'] = f"bytes {start}-{max(end - 1, start)}/{len(data)}"
        part = data[start:end]
        if cut is None or self.command == 'HEAD':
            return self._send(status, part, headers, 'application/octet-stream')

        def stream_cut():
            self.send_response(status)
            self.send_header('Content-Type', 'application/octet-stream')
            self.send_header('Content-Length', str(len(part)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(part[:cut])
            self.wfile.flush()
            self.close_connection = True
        return stream_cut


def _front_matter(text: str) -> str | None:
    if not text.startswith('---'):
        return None
    lines = text.splitlines()
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == '---':
            return '\n'.join(lines[1:i])
    return None


def _metadata_errors(text: str) -> list[str]:
    """Structural checks of a model card's metadata block (full YAML parsing is left to the tests)."""
    if not text.startswith('---'):
        return []
    block = _front_matter(text)
    if block is None:
        return ['metadata block is not closed by a "---" line']
    errors = []
    for n, line in enumerate(block.splitlines(), start=2):
        if '\t' in line[:len(line) - len(line.lstrip())]:
            errors.append(f"line {n}: tab indentation is not valid YAML")
    return errors


def _card_scalar(text: str, key: str) -> str | None:
    block = _front_matter(text) or ''
    m = re.search(rf'^{re.escape(key)}:\s*(\S.*)$', block, re.M)
    return m[1].strip().strip('\'"') if m else None


def _card_list(text: str, key: str) -> list[str]:
    block = _front_matter(text) or ''
    m = re.search(rf'^{re.escape(key)}:\s*\n((?:[ ]*- .*\n?)+)', block, re.M)
    if not m:
        return []
    return [item.strip()[2:].strip().strip('\'"') for item in m[1].splitlines() if item.strip().startswith('- ')]
