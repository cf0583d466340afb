"""Real object-store servers on 127.0.0.1 for tests: S3 (moto), GCS, and a faulty proxy."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

S3_KEY, S3_SECRET = 'unrecord-test-key', 'unrecord-test-SECRET-d41d8cd9'
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def refused_port():
  """A port on 127.0.0.1 that refuses connections for as long as the block runs: bound
  by this process and never listened on, so no other process (a Flink TaskManager
  starting, another test's server) can take it the way it can take a free_port()."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    yield s.getsockname()[1]


class ServerExited(RuntimeError):
  """An emulator exited before it answered (its port was taken, say)."""


def _wait_for(url: str, timeout: float = 90.0, process=None) -> None:
  """Until the server at `url` answers; a `process` that exits first fails at once."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if process is not None and process.poll() is not None:
      raise ServerExited(f'{url}: the server exited ({process.returncode}) before answering')
    try:
      urllib.request.urlopen(url, timeout=1)
      return
    except urllib.error.HTTPError:
      return  # the server answers, even if not with 200
    except OSError:
      time.sleep(0.1)
  raise RuntimeError(f'{url} did not come up within {timeout} s')


@contextlib.contextmanager
def _server(args, url):
  process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    _wait_for(url)
    yield
  finally:
    process.terminate()
    try:
      process.wait(10)
    except subprocess.TimeoutExpired:
      process.kill()


@contextlib.contextmanager
def s3_server():
  """moto in server mode; yields its endpoint URL."""
  port = free_port()
  moto = os.path.join(os.path.dirname(sys.executable), 'moto_server')
  url = f'http://127.0.0.1:{port}'
  with _server([moto, '-H', '127.0.0.1', '-p', str(port)], url):
    yield url


@contextlib.contextmanager
def gcs_server():
  """gcp-storage-emulator, in memory; yields its host URL (for STORAGE_EMULATOR_HOST)."""
  port = free_port()
  emulator = os.path.join(os.path.dirname(sys.executable), 'gcp-storage-emulator')
  url = f'http://127.0.0.1:{port}'
  with _server([emulator, 'start', '--host', '127.0.0.1', '--port', str(port),
                '--in-memory'], url):
    yield url


class RestartableGCS:
  """gcp-storage-emulator storing on disk under `folder`, so it can be stopped (by its
  pid) and started again mid-test with its objects kept, as a store that restarts does.

  Each start takes a fresh port (the old one may linger in TIME_WAIT); put a FaultyProxy
  in front and point its `upstream` at `url` after a restart, as a stable address would.
  """

  def __init__(self, folder: str):
    self.folder = folder
    os.makedirs(folder, exist_ok=True)
    self.url = None
    self.process = None

  def start(self) -> 'RestartableGCS':
    # tests/gcs_emulator.py: the emulator, with its index written atomically, so a stop
    # mid-upload never leaves it a half-written index to refuse at the next start.
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    for attempt in range(3):  # a free port can be taken by another process before bind
      port = free_port()
      self.url = f'http://127.0.0.1:{port}'
      self.process = subprocess.Popen(
          [sys.executable, '-m', 'tests.gcs_emulator', 'start', '--host', '127.0.0.1',
           '--port', str(port), '-q'],
          cwd=self.folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
      try:
        _wait_for(self.url, process=self.process)
        return self
      except ServerExited:
        if attempt == 2:
          raise
    return self

  def stop(self) -> None:
    if self.process is not None and self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(10)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()
    self.process = None

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()


def s3_client(endpoint: str):
  """The test's own s3fs client of the S3 server at `endpoint` (imported here, after any
  FSSPEC_S3_ENDPOINT_URL a test set, which fsspec reads when s3fs is imported)."""
  import s3fs  # pylint: disable=import-outside-toplevel
  return s3fs.S3FileSystem(key=S3_KEY, secret=S3_SECRET,
                           client_kwargs={'endpoint_url': endpoint}, skip_instance_cache=True)


@contextlib.contextmanager
def worker_pool():
  """Beam's SDK worker pool on 127.0.0.1, as the Kubernetes sidecar runs it; yields its
  address. It starts each SDK worker as a bare `python` from PATH: in the container that
  is the image's Python with the project installed, here this virtualenv's, put first.
  Stopped by its pid, its workers with it."""
  import psutil  # pylint: disable=import-outside-toplevel
  port = free_port()
  env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep +
             os.environ.get('PATH', ''))
  pool = subprocess.Popen(
      [sys.executable, '-m', 'apache_beam.runners.worker.worker_pool_main',
       f'--service_port={port}'], cwd=_REPO, env=env, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  try:
    time.sleep(2)
    assert pool.poll() is None, 'the worker pool did not start'
    yield pool, f'localhost:{port}'
  finally:
    try:
      for child in psutil.Process(pool.pid).children(recursive=True):
        child.kill()
    except psutil.NoSuchProcess:
      pass
    pool.terminate()
    pool.wait(10)


def s3_env(endpoint: str) -> dict:
  return {'AWS_ACCESS_KEY_ID': S3_KEY, 'AWS_SECRET_ACCESS_KEY': S3_SECRET,
          'AWS_DEFAULT_REGION': 'us-east-1', 'FSSPEC_S3_ENDPOINT_URL': endpoint}


def gcs_env(host: str) -> dict:
  # gcsfs probes the bucket type and stalls ~60 s per bucket against the emulator unless
  # this is off.
  return {'STORAGE_EMULATOR_HOST': host, 'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false'}


class FaultyProxy:
  """An HTTP reverse proxy to `upstream` that injects faults by request number.

  mode 'flaky': every 3rd request gets 503 SlowDown, every 7th has its connection reset,
  every 5th is delayed 0.3 s; all others pass through. mode 'deny': every write (PUT,
  POST, DELETE) gets 403 AccessDenied. mode 'pass': nothing injected; mode 'down': every
  connection is reset, as when the store is restarting. `mode` may change while it runs;
  `puts` counts the writes that reached the store; `log` holds every request's (method,
  path), in order.
  """

  def __init__(self, upstream: str, mode: str = 'flaky'):
    self.upstream = upstream.replace('http://', '')
    self.mode = mode
    self.requests = 0
    self.faults = 0
    self.puts = 0
    self.log = []
    self._lock = threading.Lock()
    proxy = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = 'HTTP/1.1'

      def log_message(self, *args):
        pass

      def _forward(self):
        length = int(self.headers.get('Content-Length') or 0)
        body = self.rfile.read(length) if length else None
        with proxy._lock:
          proxy.requests += 1
          number = proxy.requests
          proxy.log.append((self.command, self.path))
        fault = proxy._fault(number, self.command)
        if fault == 'reset':
          self.connection.shutdown(socket.SHUT_RDWR)
          self.close_connection = True
          return
        if fault in ('503', '403'):
          code, name = (503, 'SlowDown') if fault == '503' else (403, 'AccessDenied')
          payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{name}</Code>'
                     f'<Message>injected by the test proxy</Message></Error>').encode()
          self.send_response(code)
          self.send_header('Content-Type', 'application/xml')
          self.send_header('Content-Length', str(len(payload)))
          self.end_headers()
          self.wfile.write(payload)
          return
        if fault == 'slow':
          time.sleep(0.3)
        if self.command in ('PUT', 'POST'):
          with proxy._lock:
            proxy.puts += 1
        connection = http.client.HTTPConnection(proxy.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ('connection', 'expect')}
        connection.request(self.command, self.path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        self.send_response(response.status)
        for key, value in response.getheaders():
          if key.lower() not in ('transfer-encoding', 'connection', 'content-length'):
            self.send_header(key, value)
        # A HEAD response has no body but states the object's length, as S3 does.
        self.send_header('Content-Length', response.getheader('Content-Length', '0')
                         if self.command == 'HEAD' else str(len(data)))
        self.end_headers()
        if self.command != 'HEAD':
          self.wfile.write(data)
        connection.close()

      do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    self._server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    self.url = f'http://127.0.0.1:{self._server.server_address[1]}'
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

  def _fault(self, number: int, method: str):
    fault = None
    if self.mode == 'deny' and method in ('PUT', 'POST', 'DELETE'):
      fault = '403'
    elif self.mode == 'down':
      fault = 'reset'
    elif self.mode == 'flaky':
      fault = ('503' if number % 3 == 0 else 'reset' if number % 7 == 0 else
               'slow' if number % 5 == 0 else None)
    if fault in ('503', 'reset', '403'):
      with self._lock:
        self.faults += 1
    return fault

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._server.shutdown()
    self._server.server_close()
