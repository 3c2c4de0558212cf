"""Stand-ins for the Hugging Face Hub, shared by the tests that load or upload: `hub_cache`, an empty
huggingface_hub cache in offline mode that a test publishes folders into, and `fake_hub`, a local HTTP server
speaking the part of the Hub API that uploads use, so the real client code runs end to end with no network."""
import base64
import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub
import pytest


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty huggingface_hub cache in offline mode; returns a function that publishes a folder into it.

    huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE into its constants module at import, so the constants
    are patched as well as the environment.
    """
    cache = tmp_path / 'hf_cache'
    cache.mkdir()
    monkeypatch.setenv('HF_HUB_CACHE', str(cache))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)

    def publish(folder: Path, repo_id: str) -> Path:
        repo = cache / ('models--' + repo_id.replace('/', '--'))
        commit = '0123456789abcdef0123456789abcdef01234567'
        (repo / 'refs').mkdir(parents=True)
        (repo / 'refs' / 'main').write_text(commit)
        shutil.copytree(folder, repo / 'snapshots' / commit)
        return repo

    return publish


class _FakeHub(BaseHTTPRequestHandler):
    """The part of the Hub API that HfApi.create_repo / upload_folder use; records what it receives."""
    received = None  # set per server: dict of lists

    def log_message(self, *args):  # keep test output quiet
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
        endpoint = f'http://{self.server.server_address[0]}:{self.server.server_address[1]}'
        self.received['requests'].append(('POST', self.path, self.headers.get('Authorization')))
        if self.path == '/api/repos/create':
            payload = json.loads(body)
            self.received['create'].append(payload)
            return self._reply(200, {'url': f"{endpoint}/{payload['organization']}/{payload['name']}"})
        if self.path == '/api/validate-yaml':
            return self._reply(200, {})
        match = re.fullmatch(r'/api/models/([^/]+/[^/]+)/(preupload|commit)/main', self.path)
        if match and match.group(2) == 'preupload':
            files = json.loads(body)['files']
            return self._reply(200, {'files': [
                {'path': f['path'], 'uploadMode': 'regular', 'shouldIgnore': False} for f in files]})
        if match:
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item['key'] == 'header':
                    self.received['message'].append(item['value']['summary'])
                elif item['key'] == 'file':
                    self.received['files'][item['value']['path']] = base64.b64decode(item['value']['content'])
            return self._reply(200, {'commitUrl': f'{endpoint}/{match.group(1)}/commit/abc123', 'commitOid': 'abc123'})
        return self._reply(404, {'error': f'not part of the fake Hub: POST {self.path}'})

    def do_GET(self):  # noqa: N802
        self.received['requests'].append((self.command, self.path, self.headers.get('Authorization')))
        # No repository exists on this Hub except through commits: file lookups answer as huggingface.co does.
        data = json.dumps({'error': 'Repository not found'}).encode()
        self.send_response(404)
        self.send_header('X-Error-Code', 'RepoNotFound')
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        if self.command == 'GET':
            self.wfile.write(data)

    do_HEAD = do_GET


@pytest.fixture
def fake_hub(monkeypatch):
    received = {'requests': [], 'create': [], 'files': {}, 'message': []}
    handler = type('Handler', (_FakeHub,), {'received': received})
    server = ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
    thread.start()
    stopper = threading.Timer(60.0, server.shutdown)  # bounded even if the test hangs
    stopper.daemon = True
    stopper.start()
    endpoint = f'http://127.0.0.1:{server.server_address[1]}'
    # huggingface_hub reads HF_ENDPOINT into constants.ENDPOINT at import; HfApi reads the constant.
    monkeypatch.setenv('HF_ENDPOINT', endpoint)
    monkeypatch.setattr(huggingface_hub.constants, 'ENDPOINT', endpoint)
    monkeypatch.setattr(huggingface_hub.constants, 'HUGGINGFACE_CO_URL_TEMPLATE',
                        endpoint + '/{repo_id}/resolve/{revision}/{filename}')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    try:
        yield endpoint, received
    finally:
        stopper.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
