"""Where log lines go: Beam's and the libraries' to a run's log file, not the terminal.

A run's terminal shows unrecord's own lines only: the settled choices, the progress display
and the closing line. Everything else goes to one file per run, `_logs/unrecord-*.log`
under the output root (`naming.log_name`), which the closing line names:

- what the launcher logs through Python's `logging` (Beam's runner, fsspec, gRPC, and the
  local workers' own log lines, which the runner logs again), and Python warnings;
- what the local worker processes write to their stderr (a worker's traceback among it):
  `worker.LOG_ENV` names the file, and every local worker points its stderr there.

The file is written in the temp directory while the run goes, then copied under the root
when it ends, so a root that filled up or turned read-only mid-run still leaves the whole
log (the closing line then names the temp copy). `--log_level LEVEL` shows the lines of
that level and above on the terminal as well.

Standard library only: `beam_jobs/__init__.py` calls `hold()` before anything imports Beam,
because Beam's import-time `logging.warning` (e.g. "apitools not found") would otherwise
install a terminal handler for the whole process (`logging.basicConfig`).
"""

from __future__ import annotations

import collections
import logging
import os
import re
import sys
import tempfile
import threading
from typing import Optional

LEVELS = ('debug', 'info', 'warning', 'error', 'critical')
_FORMAT = '%(asctime)s %(levelname)s %(name)s: %(message)s'
# --storage_options entries whose values are credentials: never written to a log (Beam
# logs the pipeline options, and the log is copied under the output root).
_CREDENTIAL = re.compile(r'key|secret|token|password|credential|passphrase', re.I)
REDACTED = '<redacted>'


def secrets_in(options, under_credential: bool = False) -> list:
  """The credential strings in storage options (values under a key that names one)."""
  found = []
  if isinstance(options, dict):
    for key, value in options.items():
      found += secrets_in(value, under_credential or bool(_CREDENTIAL.search(str(key))))
  elif isinstance(options, (list, tuple)):
    for value in options:
      found += secrets_in(value, under_credential)
  elif under_credential and isinstance(options, str) and len(options) >= 4:
    found.append(options)
  return sorted(set(found), key=len, reverse=True)


def redact(text: str, secrets) -> str:
  for secret in secrets:
    text = text.replace(secret, REDACTED)
  return text


class _Redacting(logging.Formatter):
  def __init__(self, secrets):
    super().__init__(_FORMAT)
    self._secrets = secrets

  def format(self, record: logging.LogRecord) -> str:
    return redact(super().format(record), self._secrets)


class _Held(logging.Handler):
  """The last records logged while no run's log is open (import time, launch)."""

  def __init__(self):
    super().__init__()
    self.records = collections.deque(maxlen=2000)

  def emit(self, record: logging.LogRecord) -> None:
    self.records.append(record)


_HELD = _Held()


def hold() -> None:
  """Keeps log records in memory, off the terminal, until a run's log takes them."""
  root = logging.getLogger()
  if _HELD not in root.handlers:
    root.addHandler(_HELD)


def drop_held() -> None:
  """In a worker, whose stderr is the run's log: the records it held (its imports', which
  the launcher logged too) are dropped; Beam's own handler sends the worker's to the
  runner. A NullHandler stays, so no later `logging.warning` installs a second handler
  on stderr (each line would be in the log twice)."""
  root = logging.getLogger()
  root.removeHandler(_HELD)
  _HELD.records.clear()
  if not root.handlers:
    root.addHandler(logging.NullHandler())


def level_number(name: str) -> int:
  return getattr(logging, name.upper())


def _replay(handler: logging.Handler) -> None:
  for record in list(_HELD.records):
    if record.levelno >= handler.level:
      handler.handle(record)


def show(level: str) -> None:
  """--log_level: lines of `level` and above on the terminal too, the held ones first."""
  number = level_number(level)
  handler = logging.StreamHandler(sys.stderr)
  handler.setLevel(number)
  handler.setFormatter(logging.Formatter(_FORMAT))
  handler.set_name('unrecord-terminal')
  root = logging.getLogger()
  root.setLevel(min(root.getEffectiveLevel(), number))
  _replay(handler)
  root.addHandler(handler)


class _FileHandler(logging.FileHandler):
  """A log file that never prints its own failures to the terminal: the disk it is on may
  be the fault the run is reporting in one line."""

  def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802
    pass


def _stray_terminal_handlers(root: logging.Logger):
  """Handlers an import put on the terminal (`logging.basicConfig`'s); not --log_level's."""
  return [h for h in root.handlers if type(h) is logging.StreamHandler  # pylint: disable=unidiomatic-typecheck
          and h.get_name() != 'unrecord-terminal'
          and getattr(h, 'stream', None) in (sys.stderr, sys.__stderr__, sys.stdout)]


class RunLog:
  """One run's log: open from construction to close(), which copies it under the root."""

  def __init__(self, output: str, storage_options, run_id: str, started: float):
    from beam_jobs import worker  # pylint: disable=import-outside-toplevel
    from transforms.output import naming  # pylint: disable=import-outside-toplevel
    self._output, self._storage_options = output, storage_options
    self.name = naming.log_name(started, run_id)
    self.where: Optional[str] = None  # once closed
    self.path = os.path.join(tempfile.gettempdir(), f'unrecord-{run_id[:12]}.log')
    self._secrets = secrets_in(dict(storage_options or {}))
    os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    self._handler = _FileHandler(self.path, encoding='utf-8')
    self._handler.setLevel(logging.DEBUG)
    self._handler.setFormatter(_Redacting(self._secrets))
    root = logging.getLogger()
    self._level = root.level
    self._stray = _stray_terminal_handlers(root)
    for handler in self._stray:
      root.removeHandler(handler)
    _replay(self._handler)
    root.removeHandler(_HELD)
    _HELD.records.clear()
    root.addHandler(self._handler)
    root.setLevel(min(root.getEffectiveLevel(), logging.INFO))
    logging.captureWarnings(True)
    self._worker_env = worker.LOG_ENV
    os.environ[worker.LOG_ENV] = self.path  # every local worker's stderr
    # The runner's threads (one per local worker) end with an exception when a worker is
    # stopped; that is Beam's news, for the log too.
    self._excepthook, threading.excepthook = threading.excepthook, self._thread_error

  def _thread_error(self, args) -> None:
    logging.getLogger(__name__).error(
        'uncaught in thread %s', getattr(args.thread, 'name', '?'),
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

  def close(self, copy: bool = True) -> str:
    """Stops logging to the file; copies it to the root's `_logs/` (keeping the newest
    `naming.KEPT_LOGS`) unless `copy` is False (the store is the fault). Returns where the
    log is: its URL under the root, or the temp file's path when it could not go there.
    Closing again returns the same."""
    if self.where is not None:
      return self.where
    self.where = self._close(copy)
    return self.where

  def _close(self, copy: bool) -> str:
    root_logger = logging.getLogger()
    root_logger.removeHandler(self._handler)
    self._handler.close()
    for handler in self._stray:
      root_logger.addHandler(handler)
    root_logger.setLevel(self._level)
    logging.captureWarnings(False)
    os.environ.pop(self._worker_env, None)
    threading.excepthook = self._excepthook
    hold()
    if not copy:
      return self.path
    try:
      return self._copy()
    except Exception:  # pylint: disable=broad-except  (the root may be the fault)
      return self.path

  def _copy(self) -> str:
    from transforms.output import naming  # pylint: disable=import-outside-toplevel
    from transforms.output import root_files  # pylint: disable=import-outside-toplevel
    root = root_files.OutputRoot(self._output, self._storage_options)
    with open(self.path, 'r', encoding='utf-8', errors='replace') as source, \
        root.open_write(self.name) as target:
      for line in source:  # the workers' own lines too: redacted on the way
        target.write(redact(line, self._secrets).encode('utf-8'))
    os.unlink(self.path)
    folder = root.path(naming.LOGS)
    logs = sorted(p for p in root.fs.ls(folder, detail=False)
                  if p.rsplit('/', 1)[-1].startswith('unrecord-') and p.endswith('.log'))
    for old in logs[:-naming.KEPT_LOGS]:
      try:
        root.fs.rm_file(old)
      except OSError:
        pass
    return root.url_of(self.name) if not root.local else root.path(self.name)
