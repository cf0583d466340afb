"""Live progress for local runs: workers send counts, the launcher shows a bar or log lines.

Beam's local runners only hand back metrics when the job is over, so each worker process
sends its cumulative counts (written, skipped, failed) as a small UDP datagram to the
launcher on 127.0.0.1, at most twice a second; nothing is sent per element. One sender a
process (`process_sender`), whichever of its DoFn instances counts: a worker's SDK
harness may hold a DoFn twice (one per bundle processor), and a sender each sent twice
the datagrams. The launcher sums the latest counts of every sender and prints a live bar
on a terminal, or a plain line every `log_interval` seconds otherwise (CI logs, Airflow).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Callable, Dict, Optional, Tuple

from transforms import errors

Address = Tuple[str, int]
KINDS = ('written', 'skipped', 'failed')  # what happened to each image
# Record ranges finished: the ETA waits for the first, so that start-up time (workers
# starting, the first reads) does not count as the rate.
RANGES = 'ranges'
STEADY_AFTER = 1.0  # seconds after the first range's end before the rate counts from it


class ProgressSender:
  """`count()` per outcome; sends at most every `interval` seconds. Thread-safe: the DoFn
  instances of one process share it (`process_sender`)."""

  def __init__(self, address: Optional[Address], interval: float = 0.5):
    self._address = address
    self._interval = interval
    self._socket = None
    self._id = uuid.uuid4().hex
    self._counts = {kind: 0 for kind in KINDS + (RANGES,)}
    self._last_sent = 0.0
    self._lock = threading.Lock()

  def count(self, kind: str, n: int = 1) -> None:
    if self._address is None:
      return
    with self._lock:
      self._counts[kind] += n
      now = time.monotonic()
      if now - self._last_sent >= self._interval:
        self._send(now)

  def flush(self, now: Optional[float] = None) -> None:
    if self._address is None:
      return
    with self._lock:
      self._send(now or time.monotonic())

  def _send(self, now: float) -> None:
    if self._socket is None:
      self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    self._last_sent = now
    message = {'id': self._id, 'pid': os.getpid(), 'counts': self._counts}
    try:
      self._socket.sendto(json.dumps(message).encode(), self._address)
    except OSError:
      pass  # progress is best effort; the job's results never depend on it

  def close(self) -> None:
    self.flush()
    with self._lock:
      if self._socket is not None:
        self._socket.close()
        self._socket = None


_SENDERS: Dict[Tuple[int, Address], ProgressSender] = {}
_SENDERS_LOCK = threading.Lock()


def process_sender(address: Optional[Address]) -> ProgressSender:
  """This process's one sender to `address`, made at its first use. Keyed by the pid too:
  a worker forked from a warm process makes its own. Its `close()` only flushes, since
  another DoFn instance of the process may still count; the socket goes with the
  process."""
  if address is None:
    return ProgressSender(None)
  key = (os.getpid(), tuple(address))
  with _SENDERS_LOCK:
    sender = _SENDERS.get(key)
    if sender is None:
      sender = _SENDERS[key] = _SharedSender(address)
    return sender


class _SharedSender(ProgressSender):

  def close(self) -> None:
    self.flush()


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  if seconds >= 3600:
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m'
  if seconds >= 60:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds}s'


def progress_line(done: int, failed: int, total: Optional[int], estimated: bool,
                  seconds: float, width: int = 24,
                  steady: Optional[Tuple[float, int]] = None) -> str:
  """'[#####.....] 1200/4000 (30%) 412 img/s ETA 7s, 3 failed'.

  `steady`: (seconds, images done) when the first record range finished; the rate
  shown, and the ETA, count from there, once a second has passed (workers report every
  half second). Before that there is no ETA.
  """
  rate = done / seconds if seconds > 0 else 0.0
  if steady is not None and seconds - steady[0] < STEADY_AFTER:
    steady = None
  if steady is not None and done > steady[1]:
    rate = (done - steady[1]) / (seconds - steady[0])
  if total:
    fraction = min(done / total, 1.0)
    bar = '#' * int(fraction * width) + '.' * (width - int(fraction * width))
    remaining = (total - done) / rate if rate > 0 and steady is not None else None
    eta = f' ETA {_duration(remaining)}' if remaining is not None and done < total else ''
    head = (f'[{bar}] {done}/{"~" if estimated else ""}{total} ({fraction:.0%}) '
            f'{rate:.0f} img/s{eta}')
  else:
    head = f'{done} images, {rate:.0f} img/s'
  return head + (f', {failed} failed' if failed else '')


class ProgressMonitor:
  """Runs in the launcher: receives counts, prints progress until `stop()`."""

  def __init__(self, stream=None, log_interval: float = 10.0, show_after: float = 2.0,
               refresh: float = 0.25, quiet: bool = False):
    self._stream = stream or sys.stderr
    self._live = bool(getattr(self._stream, 'isatty', lambda: False)())
    self._quiet = quiet  # counts only: for the closing line of an interrupted run
    self._log_interval = log_interval
    self._show_after = show_after
    self._refresh = refresh
    self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    self._socket.bind(('127.0.0.1', 0))
    self._socket.settimeout(refresh)
    self._latest: Dict[str, Dict[str, int]] = {}
    self._pids: Dict[str, Optional[int]] = {}
    self._total: Optional[int] = None
    self._estimated = False
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name='unrecord-progress',
                                    daemon=True)
    self._started = time.monotonic()
    self._steady: Optional[Tuple[float, int]] = None  # see progress_line
    self.lines_printed = 0
    self.messages = 0

  @property
  def address(self) -> Address:
    return self._socket.getsockname()

  def set_total(self, total: int, estimated: bool = False) -> None:
    self._total, self._estimated = total, estimated

  def count_in_background(self, counter: Callable[[], Tuple[int, bool]]) -> None:
    """Runs `counter` (-> total, estimated) off the main thread; progress starts without it."""
    def run():
      try:
        self.set_total(*counter())
      except Exception:  # the bar works without a total
        pass
    threading.Thread(target=run, name='unrecord-count', daemon=True).start()

  def totals(self) -> Dict[str, int]:
    sums = {kind: 0 for kind in KINDS}
    for counts in list(self._latest.values()):
      for kind in KINDS:
        sums[kind] += counts.get(kind, 0)
    return sums

  def senders(self) -> Tuple[int, int]:
    """(senders heard from, worker processes they run in)."""
    pids = dict(self._pids)
    return len(pids), len(set(pids.values()))

  def ranges_done(self) -> int:
    return sum(counts.get(RANGES, 0) for counts in list(self._latest.values()))

  def start(self) -> 'ProgressMonitor':
    self._started = time.monotonic()
    self._thread.start()
    return self

  def _run(self) -> None:
    last_log = self._started
    while True:
      try:
        data = self._socket.recv(65536)
        if not data:  # stop()'s wake-up: everything sent before it has been read
          return
        message = json.loads(data)
        self._latest[message['id']] = message['counts']
        self._pids[message['id']] = message.get('pid')
        self.messages += 1
        if self._steady is None and self.ranges_done():
          self._steady = (time.monotonic() - self._started, sum(self.totals().values()))
      except socket.timeout:
        if self._stop.is_set():
          return
      except (ValueError, KeyError, TypeError):
        pass
      except OSError:
        return
      now = time.monotonic()
      if self._quiet or now - self._started < self._show_after:
        continue
      if self._live:
        self._print(self._line(now), end='\r')
      elif now - last_log >= self._log_interval:
        last_log = now
        self._print(self._line(now))

  def _line(self, now: float) -> str:
    counts = self.totals()
    done = sum(counts.values())
    return 'unrecord: ' + progress_line(done, counts['failed'], self._total,
                                        self._estimated, now - self._started,
                                        steady=self._steady)

  def _print(self, text: str, end: str = '\n') -> None:
    self._stream.write(text + ('\033[K' if self._live else '') + end)
    self._stream.flush()
    self.lines_printed += 1

  def stop(self) -> None:
    """Ends the thread once it has read the counts sent so far: an empty datagram to
    its own socket wakes it at once rather than at its next `refresh` timeout."""
    self._stop.set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as wake:
      wake.sendto(b'', self.address)
    self._thread.join(2.0)
    if self._live and self.lines_printed:
      self._stream.write('\n')
    self._socket.close()


class Tally:
  """What a worker counts: metric values by name (`records_read`, `failed_<reason>`, ...),
  which its DoFn hands to the runner, and the live progress; every failure becomes its
  dead-letter row here, so the export and the read/decode transforms count one way."""

  def __init__(self, sender: ProgressSender):
    self.counts: Dict[str, int] = {}
    self.sender = sender

  def add(self, name: str, n: int = 1) -> None:
    self.counts[name] = self.counts.get(name, 0) + n

  def fail(self, error: errors.UnrecordError, stage: str, **fields) -> errors.Failure:
    """`error` as its dead-letter row, counted."""
    self.sender.count('failed')
    self.add(f'failed_{error.reason}')
    return errors.Failure.from_error(error, stage, **fields)

  def take(self) -> Dict[str, int]:
    """The counts so far, forgotten here (each is handed to the runner once)."""
    counts, self.counts = self.counts, {}
    return counts
