"""Local worker processes for the FnApiRunner, started before the runner asks for them.

Beam's local multi-process mode starts `python -m apache_beam.runners.worker.sdk_worker_main`
when the first stage runs; each such worker then spends about 1.6 s importing Beam, and at
the end another 0.5 s in interpreter shutdown, one worker after the other. On a small
job that is most of the wall time (docs/benchmarks.md).

So the launcher starts `WarmPool` first thing: one process that imports Beam and
unrecord's transforms while the launcher itself is still importing and sampling, then
forks the warm workers from itself. The imports are paid once, on one core, instead of
once per worker with all of them and the launcher contending for the same cores (with
2 workers on 2 cores that cost about 1 s of start-up; docs/benchmarks.md). Nothing
forked has started a thread or a gRPC channel: the imports start none that matter
(OpenBLAS and jemalloc re-arm theirs across fork), and channels are made after it.

The runner is given a worker command that runs this module's tiny `--client` (standard
library only): it hands its environment (the runner's control address, pipeline options,
worker id) to a warm process over a Unix socket and waits for it, so the runner sees a
worker process with the usual lifetime and exit code. The warm process runs Beam's own
`sdk_worker_main.main`, then exits without interpreter teardown.

If no warm process is free (more workers asked for than started, or a warm process died)
the client runs the worker itself, as Beam would. A warm process exits when its client
goes away, and when the importing process or the launcher does.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Optional

from beam_jobs import logs

_ACK = b'A'
_ACCEPT_POLL_SECONDS = 0.5


class WarmPool:
  """`count` warm worker processes listening on one Unix socket; close() when done.

  One process imports, then forks the `count` workers (its children); closing the pool
  stops it and every worker still running.
  """

  def __init__(self, count: int):
    self._folder = tempfile.mkdtemp(prefix='unrecord-workers-')
    self.address = os.path.join(self._folder, 'workers.sock')
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(self.address)
    listener.listen(max(count, 1))
    command = [sys.executable, '-m', 'beam_jobs.worker', '--serve', str(listener.fileno()),
               str(os.getpid()), str(count)]
    self.process = subprocess.Popen(command, pass_fds=(listener.fileno(),))
    # The warm processes hold the listening socket now. Once each has taken a client and
    # closed it, connecting fails at once and a client falls back to a cold start.
    listener.close()

  def worker_command(self) -> str:
    """The shell command line the runner starts for each worker."""
    return (f'{shlex.quote(sys.executable)} -m beam_jobs.worker '
            f'--client {shlex.quote(self.address)}')

  def close(self) -> None:
    """Stops the warm processes still running; removes the socket."""
    if self.process.poll() is None:
      self.process.terminate()
    try:
      self.process.wait(timeout=5)
    except subprocess.TimeoutExpired:
      self.process.kill()
      self.process.wait()
    try:
      os.unlink(self.address)
      os.rmdir(self._folder)
    except OSError:
      pass


def start_for(argv: List[str]) -> Optional[WarmPool]:
  """A pool when `unrecord export argv` will run local multi-process workers, else None.

  Reads the few options that decide it without importing Beam (that is the point).
  """
  def value(flag: str) -> Optional[str]:
    for i, arg in enumerate(argv):
      if arg == flag and i + 1 < len(argv):
        return argv[i + 1]
      if arg.startswith(flag + '='):
        return arg.split('=', 1)[1]
    return None

  if '-h' in argv or '--help' in argv:
    return None
  if value('--runner') not in (None, 'DirectRunner', 'FnApiRunner'):
    return None
  if value('--direct_running_mode') not in (None, 'multi_processing'):
    return None
  try:
    workers = int(value('--direct_num_workers') or os.cpu_count() or 1)
  except ValueError:
    return None  # the option parser will say what is wrong with it
  return WarmPool(workers) if workers > 1 else None


# ---------------------------------------------------------------------------------------
# The warm process


def serve(listener_fd: int, launcher_pid: int, count: int) -> None:
  """Imports everything a worker needs once, then forks `count` warm workers from itself.

  Stays as their parent: it stops them (SIGTERM) when it is terminated or the launcher
  goes away, and exits when all of them have.
  """
  # Ctrl-C reaches every process of the terminal's group; the launcher alone answers it,
  # and stops the workers (else each prints a KeyboardInterrupt traceback).
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  from apache_beam.runners.worker import sdk_worker_main  # noqa: F401
  # The job's own modules (ptransforms imports the rest), so unpickling its DoFns costs
  # no imports later.
  import transforms.ptransforms  # noqa: F401  pylint: disable=unused-import

  listener = socket.socket(fileno=listener_fd)
  parent = os.getpid()
  children = set()
  for _ in range(count):
    pid = os.fork()
    if pid == 0:
      _serve_one(listener, parent)  # never returns
    children.add(pid)
  listener.close()

  def stop(*_):
    for pid in children:
      try:
        os.kill(pid, signal.SIGTERM)
      except ProcessLookupError:
        pass
    os._exit(0)

  signal.signal(signal.SIGTERM, stop)
  while children:
    if os.getppid() != launcher_pid:
      stop()
    pid, _ = os.waitpid(-1, os.WNOHANG)
    if pid:
      children.discard(pid)
    else:
      time.sleep(_ACCEPT_POLL_SECONDS)
  os._exit(0)


def _serve_one(listener: socket.socket, parent_pid: int) -> None:
  """In a forked warm process: takes one client, runs the worker for it, exits."""
  from apache_beam.runners.worker import sdk_worker_main
  connection, environment = _take_client(listener, parent_pid)
  listener.close()
  os.environ.clear()
  os.environ.update(environment)
  _log_to_file()
  logs.drop_held()
  threading.Thread(target=_exit_when_client_leaves, args=(connection,), daemon=True).start()
  code = 0
  try:
    sdk_worker_main.main(sys.argv)
  except BaseException:  # pylint: disable=broad-except
    # sdk_worker_main has logged it to the runner; the exit code tells the runner too.
    code = 1
  try:
    connection.sendall(bytes([code]))
  except OSError:
    pass
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)  # the harness has closed its channels; skip interpreter teardown


def _take_client(listener: socket.socket, parent_pid: int):
  """Waits for a client and its environment; a client that gave up is skipped."""
  listener.settimeout(_ACCEPT_POLL_SECONDS)
  while True:
    if os.getppid() != parent_pid:
      os._exit(0)  # the pool is gone; nobody will ask for this worker
    try:
      connection, _ = listener.accept()
    except socket.timeout:
      continue
    try:
      connection.settimeout(None)
      environment = json.loads(_read_line(connection))
      connection.sendall(_ACK)
      return connection, environment
    except (OSError, ValueError):
      connection.close()


# The launcher names a file for the workers' own output (Beam's tracebacks among it), so
# a failed run ends with one line on the terminal that names the file (beam_jobs/logs.py).
LOG_ENV = 'UNRECORD_WORKER_LOG'


def _log_to_file() -> None:
  path = os.environ.get(LOG_ENV)
  if not path:
    return
  try:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
  except OSError:
    return  # the terminal, as before
  os.dup2(fd, 2)
  os.close(fd)


def _exit_when_client_leaves(connection: socket.socket) -> None:
  try:
    while connection.recv(1):
      pass
  except OSError:
    pass
  os._exit(1)


def _read_line(connection: socket.socket) -> bytes:
  data = bytearray()
  while not data.endswith(b'\n'):
    chunk = connection.recv(1 << 16)
    if not chunk:
      raise ConnectionError('client closed before sending its environment')
    data += chunk
  return bytes(data)


# ---------------------------------------------------------------------------------------
# The client the runner starts


def client(address: str) -> int:
  """Hands this process's environment to a warm worker and mirrors its exit code."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher answers Ctrl-C (see serve)
  try:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Warm processes may still be importing; one that died closes its socket, so a
    # client never waits on a worker that will not come.
    connection.settimeout(60)
    connection.connect(address)
    connection.sendall(json.dumps(dict(os.environ)).encode() + b'\n')
    if connection.recv(1) != _ACK:
      raise ConnectionError('no warm worker took the connection')
  except OSError:
    return cold_start()
  connection.settimeout(None)
  reply = connection.recv(1)
  return reply[0] if reply else 1


def cold_start() -> int:
  """No warm process free: be the worker, as `sdk_worker_main` would."""
  _log_to_file()
  logs.drop_held()
  from apache_beam.runners.worker import sdk_worker_main
  sdk_worker_main.main(sys.argv)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(0)


def cold_command() -> str:
  """The command line of a worker with no warm pool: Beam's own worker, its stderr in
  the run's log (Beam's multi_processing mode would leave it on the terminal)."""
  return f'{shlex.quote(sys.executable)} -m beam_jobs.worker --cold'


def main(argv: Optional[List[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv == ['--cold']:
    return cold_start()
  if argv[:1] == ['--serve'] and len(argv) == 4:
    serve(int(argv[1]), int(argv[2]), int(argv[3]))
    return 0
  if argv[:1] == ['--client'] and len(argv) == 2:
    return client(argv[1])
  print('usage: python -m beam_jobs.worker --client SOCKET | --cold | '
        '--serve FD LAUNCHER_PID COUNT',
        file=sys.stderr)
  return 2


if __name__ == '__main__':
  sys.exit(main())
