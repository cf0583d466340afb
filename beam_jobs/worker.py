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

Every process here notices the launcher's death itself, at once (a killed launcher's
workers must not go on writing images beside the next run): on Linux the kernel kills
it when its parent dies (`die_with_parent`, PR_SET_PDEATHSIG); everywhere, the importer
and the warm processes hold the read end of a pipe whose only write end is the
launcher's, and exit when it reads end-of-file. Each pool's folder in the temp directory
carries its launcher's pid, so the next pool removes the folders of dead launchers.
"""

from __future__ import annotations

import glob
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Optional

from beam_jobs import held_imports
from beam_jobs import logs

_ACK = b'A'
_ACCEPT_POLL_SECONDS = 0.5
# A pool's folder: `unrecord-workers-<launcher pid>-<random>` in the temp directory.
FOLDER_PREFIX = 'unrecord-workers-'
_FOLDER_NAME = re.compile(re.escape(FOLDER_PREFIX) + r'([0-9]+)-[^/]+\Z')
# Without PR_SET_PDEATHSIG (not Linux), how often a client asks whether its launcher lives.
_PARENT_POLL_SECONDS = 0.05


class WarmPool:
  """`count` warm worker processes listening on one Unix socket; close() when done.

  One process imports, then forks the `count` workers (its children); closing the pool
  stops it and every worker still running, and so does this process's death.
  """

  def __init__(self, count: int):
    sweep_stale_folders()
    self._folder = tempfile.mkdtemp(prefix=f'{FOLDER_PREFIX}{os.getpid()}-')
    self.address = os.path.join(self._folder, 'workers.sock')
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(self.address)
    listener.listen(max(count, 1))
    # The launcher alone holds the write end (os.pipe's ends are not inherited): when it
    # dies, or closes the pool, the importer and every warm process read end-of-file.
    alive, self._alive = os.pipe()
    # The kernel's parent-death signal fires when the *thread* that started a process
    # ends, so the importer asks for it only when started by the main thread.
    parent = os.getpid() if threading.current_thread() is threading.main_thread() else 0
    command = [sys.executable, '-m', 'beam_jobs.worker', '--serve', str(listener.fileno()),
               str(parent), str(count), str(alive)]
    self.process = subprocess.Popen(command, pass_fds=(listener.fileno(), alive))
    # The warm processes hold the listening socket now. Once each has taken a client and
    # closed it, connecting fails at once and a client falls back to a cold start.
    listener.close()
    os.close(alive)

  def worker_command(self) -> str:
    """The shell command line the runner starts for each worker.

    `exec`: the client replaces the shell, so the launcher is its parent (whose death
    it notices) rather than a shell that would outlive the launcher.
    """
    return (f'exec {shlex.quote(sys.executable)} -m beam_jobs.worker '
            f'--client {shlex.quote(self.address)} {os.getpid()}')

  def close(self) -> None:
    """Stops the warm processes still running; removes the socket."""
    if self._alive is not None:
      os.close(self._alive)
      self._alive = None
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


def sweep_stale_folders(temp_dir: Optional[str] = None) -> List[str]:
  """Removes the pool folders whose launcher is dead (killed: it could not remove its
  own); returns them. A folder of a live process, or of another user, stays."""
  temp_dir = temp_dir or tempfile.gettempdir()
  removed = []
  try:
    names = os.listdir(temp_dir)
  except OSError:
    return removed
  for name in names:
    found = _FOLDER_NAME.match(name)
    if not found or _process_exists(int(found.group(1))):
      continue
    path = os.path.join(temp_dir, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path, ignore_errors=True)
      if not os.path.exists(path):
        removed.append(path)
  return removed


def _process_exists(pid: int) -> bool:
  if pid <= 0:
    return True  # not a pid this module wrote: leave it
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:
    return True  # it exists, as another user's process
  return True


def die_with_parent(parent_pid: int) -> bool:
  """Linux: the kernel SIGKILLs this process when its parent (the thread that started
  it) ends. Exits now if `parent_pid` is no longer the parent (it died before this was
  set). False, and nothing set, where PR_SET_PDEATHSIG does not exist."""
  if not sys.platform.startswith('linux'):
    return False
  try:
    import ctypes  # here: the client imports as little as it can
    libc = ctypes.CDLL(None, use_errno=True)
    armed = libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0  # 1: PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    armed = False
  if os.getppid() != parent_pid:
    os._exit(1)
  return armed


def _exit_when_closed(fd: int) -> None:
  """In a thread: exits the process when the launcher's end of the pipe `fd` closes."""
  try:
    while os.read(fd, 1):
      pass
  except OSError:
    pass
  os._exit(1)


def _exit_when_parent_changes(parent_pid: int) -> None:
  """In a thread, where die_with_parent cannot be had: polls for the parent's death."""
  while os.getppid() == parent_pid:
    time.sleep(_PARENT_POLL_SECONDS)
  os._exit(1)


def _option_value(argv: List[str], flag: str) -> Optional[str]:
  for i, arg in enumerate(argv):
    if arg == flag and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith(flag + '='):
      return arg.split('=', 1)[1]
  return None


# A local input of fewer bytes runs on one worker inside the launcher (FnApiRunner's
# in_memory mode) unless --direct_num_workers says otherwise: two worker processes cost
# about 0.6 s more to start on two cores (a second interpreter importing Beam beside the
# launcher, the runner's gRPC servers, the workers' harness), which is more than the
# second core saves on 8 MB of records (about 10,000 28x28 images, the cheapest a byte;
# docs/benchmarks.md, "Fixed costs of a small run").
SMALL_INPUT_BYTES = 8 * 2**20
# A compressed file holds about this many times its size in records (8x is typical
# of gzipped image tensors; PNG or JPEG payloads compress far less).
_COMPRESSED_FACTOR = 8
_COMPRESSED_SUFFIXES = ('.gz', '.gzip', '.zz', '.zlib')
_GZIP_MAGIC = b'\x1f\x8b'


def input_patterns(argv: List[str]) -> List[str]:
  """Every --input value (repeated, or comma-separated), as given."""
  values = []
  for i, arg in enumerate(argv):
    if arg == '--input' and i + 1 < len(argv):
      values.append(argv[i + 1])
    elif arg.startswith('--input='):
      values.append(arg.split('=', 1)[1])
  return [p for value in values for p in value.split(',') if p]


def local_input_bytes(argv: List[str], limit: int = SMALL_INPUT_BYTES) -> Optional[int]:
  """About how many bytes of records the --input patterns name on this machine's disks
  (a compressed file counts `_COMPRESSED_FACTOR` times its size), read with the standard
  library alone; None when a pattern is a URL or names nothing here (the plan will say
  what). Stops counting once past `limit`: only "smaller than" is asked.
  """
  patterns = input_patterns(argv)
  if not patterns:
    return None
  compressed_flag = _option_value(argv, '--compression') in ('gzip', 'zlib')
  total = 0
  for pattern in patterns:
    if pattern.startswith('file://'):
      pattern = pattern[len('file://'):]
    elif '://' in pattern:
      return None
    if os.path.isdir(pattern):
      paths = [os.path.join(pattern, name) for name in os.listdir(pattern)]
    elif any(c in pattern for c in '*?['):
      paths = glob.glob(pattern, recursive=True)
    else:
      paths = [pattern]
    paths = [p for p in paths if os.path.isfile(p)]
    if not paths:
      return None
    for path in paths:
      size = os.path.getsize(path)
      if compressed_flag or path.endswith(_COMPRESSED_SUFFIXES) or _is_gzip(path):
        size *= _COMPRESSED_FACTOR
      total += size
      if total >= limit:
        return total
  return total


def _is_gzip(path: str) -> bool:
  try:
    with open(path, 'rb') as f:
      return f.read(2) == _GZIP_MAGIC
  except OSError:
    return False


def default_workers(argv: List[str]) -> int:
  """Local workers when --direct_num_workers is not given: one for a small local input
  (it runs inside the launcher), else one per core."""
  size = local_input_bytes(argv)
  if size is not None and size < SMALL_INPUT_BYTES:
    return 1
  return os.cpu_count() or 1


def runs_locally(argv: List[str]) -> bool:
  """Whether `unrecord export argv` runs on the local runner (FnApiRunner), read
  without importing Beam (local_runner.is_local answers the same once it is)."""
  return _option_value(argv, '--runner') in (None, 'DirectRunner', 'FnApiRunner')


def start_for(argv: List[str]) -> Optional[WarmPool]:
  """A pool when `unrecord export argv` will run local multi-process workers, else None.

  Reads the few options that decide it without importing Beam (that is the point).
  """
  def value(flag: str) -> Optional[str]:
    return _option_value(argv, flag)

  if '-h' in argv or '--help' in argv:
    return None
  if not runs_locally(argv):
    return None
  if value('--direct_running_mode') not in (None, 'multi_processing'):
    return None
  try:
    workers = int(value('--direct_num_workers') or default_workers(argv))
  except ValueError:
    return None  # the option parser will say what is wrong with it
  if workers <= 1:
    return None
  try:
    return WarmPool(workers)
  except OSError:  # e.g. a socket path too long for a deep TMPDIR: Beam's cold workers
    return None


# ---------------------------------------------------------------------------------------
# The warm process


def serve(listener_fd: int, launcher_pid: int, count: int, alive_fd: int) -> None:
  """Imports everything a worker needs once, then forks `count` warm workers from itself.

  Stays as their parent: it stops them (SIGTERM) when it is terminated, and they die
  with it and with the launcher (`alive_fd` at end-of-file, or the kernel's parent-death
  signal when `launcher_pid` is given); it exits when all of them have.
  """
  if launcher_pid:
    die_with_parent(launcher_pid)
  # Ctrl-C reaches every process of the terminal's group; the launcher alone answers it,
  # and stops the workers (else each prints a KeyboardInterrupt traceback).
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  # A local run's workers need none of Google Cloud's clients (beam_jobs.held_imports).
  with held_imports.held_back():
    from apache_beam.runners.worker import sdk_worker_main  # noqa: F401
    # The job's own modules (ptransforms imports the rest), so unpickling its DoFns
    # costs no imports later.
    import transforms.ptransforms  # noqa: F401  pylint: disable=unused-import

  listener = socket.socket(fileno=listener_fd)
  parent = os.getpid()
  children = set()
  for _ in range(count):
    pid = os.fork()
    if pid == 0:
      _serve_one(listener, parent, alive_fd)  # never returns
    children.add(pid)
  listener.close()

  def stop(*_, how=signal.SIGTERM):
    for pid in children:
      try:
        os.kill(pid, how)
      except ProcessLookupError:
        pass
    os._exit(0)

  signal.signal(signal.SIGTERM, stop)
  while children:
    # Wakes at once when the launcher's end of the pipe closes (it died, or closed us).
    if select.select([alive_fd], [], [], _ACCEPT_POLL_SECONDS)[0]:
      stop(how=signal.SIGKILL)
    while children:
      pid, _ = os.waitpid(-1, os.WNOHANG)
      if not pid:
        break
      children.discard(pid)
  os._exit(0)


def _serve_one(listener: socket.socket, parent_pid: int, alive_fd: int) -> None:
  """In a forked warm process: takes one client, runs the worker for it, exits."""
  die_with_parent(parent_pid)
  threading.Thread(target=_exit_when_closed, args=(alive_fd,), daemon=True).start()
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


def client(address: str, launcher_pid: int = 0) -> int:
  """Hands this process's environment to a warm worker and mirrors its exit code.

  Dies with `launcher_pid`, its parent, when given; the warm worker then sees the
  connection close and exits too.
  """
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher answers Ctrl-C (see serve)
  if launcher_pid and not die_with_parent(launcher_pid):
    threading.Thread(target=_exit_when_parent_changes, args=(launcher_pid,),
                     daemon=True).start()
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


def cold_start(launcher_pid: int = 0) -> int:
  """No warm process free: be the worker, as `sdk_worker_main` would (and, started by
  `cold_command`, die with the launcher as the warm workers do)."""
  if launcher_pid and not die_with_parent(launcher_pid):
    threading.Thread(target=_exit_when_parent_changes, args=(launcher_pid,),
                     daemon=True).start()
  _log_to_file()
  logs.drop_held()
  from apache_beam.runners.worker import sdk_worker_main
  sdk_worker_main.main(sys.argv)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(0)


def cold_command() -> str:
  """The command line of a worker with no warm pool: Beam's own worker, its stderr in
  the run's log (Beam's multi_processing mode would leave it on the terminal). `exec`, as
  in `WarmPool.worker_command`: the launcher is its parent, whose death ends it."""
  return f'exec {shlex.quote(sys.executable)} -m beam_jobs.worker --cold {os.getpid()}'


def main(argv: Optional[List[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == ['--cold'] and len(argv) in (1, 2):
    return cold_start(int(argv[1]) if len(argv) == 2 else 0)
  if argv[:1] == ['--serve'] and len(argv) == 5:
    serve(int(argv[1]), int(argv[2]), int(argv[3]), int(argv[4]))
    return 0
  if argv[:1] == ['--client'] and len(argv) in (2, 3):
    return client(argv[1], int(argv[2]) if len(argv) == 3 else 0)
  print('usage: python -m beam_jobs.worker --client SOCKET [LAUNCHER_PID] | '
        '--cold [LAUNCHER_PID] | --serve FD LAUNCHER_PID COUNT ALIVE_FD', file=sys.stderr)
  return 2


if __name__ == '__main__':
  sys.exit(main())
