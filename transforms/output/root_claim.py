"""Claiming an output root for one run: one writer at a time, no export mixed into another's.

- The lock `_unrecord_lock.json`. On a local root the launcher holds an flock on it for
  its whole life; the kernel frees it when the holder dies, so a dead holder never blocks
  the next run. On an object store it is a lease object made by a conditional create
  (S3 `If-None-Match: *`, GCS `ifGenerationMatch=0`), renewed while the launcher waits,
  and taken over by the next run once it has expired (the holder died).
- The identity `_unrecord_run.json`: the inputs and output settings of the export that
  last wrote the root, written at launch, so a killed run's files are known too. A plain
  run into a root another export wrote is refused; --skip_existing, --incremental and
  --overwrite say how to combine them.
- `_SUCCESS` is removed at launch, before anything is written, so it is never stale.

Beam-free: the launcher claims, the job's last step releases a lease it was handed.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Dict, Optional, Sequence

from transforms import errors
from transforms.output import naming
from transforms.output import root_files

LOCK = '_unrecord_lock.json'
IDENTITY = '_unrecord_run.json'
SUCCESS = naming.SUCCESS
LEGACY_REPORT = naming.REPORT  # roots written before the identity file existed
LEASE_SECONDS = 600.0  # an object-store lease the launcher no longer renews ends after this
NO_WAIT_LEASE_SECONDS = 24 * 3600.0  # --no_wait: the job's last step releases it
MODES = ('plain', 'skip_existing', 'incremental', 'overwrite')


def identity(inputs: Sequence[str], settings: Dict[str, object]) -> dict:
  """What makes two exports the same: their input patterns and output settings.

  Local patterns are made absolute, so the same run from another folder is the same.
  """
  def absolute(pattern: str) -> str:
    return pattern if '://' in pattern else os.path.abspath(pattern)
  return json.loads(json.dumps({'inputs': sorted(absolute(p) for p in inputs),
                                'settings': dict(sorted(settings.items()))}))


def previous_identity(root: root_files.OutputRoot) -> Optional[dict]:
  """The identity of the export that last wrote `root`, or None (a new or foreign root)."""
  try:
    return json.loads(root.read(IDENTITY))
  except FileNotFoundError:
    pass
  except ValueError:
    return None
  try:
    options = json.loads(root.read(LEGACY_REPORT))['options']
  except (FileNotFoundError, ValueError, KeyError, TypeError):
    return None
  inputs = options.pop('input', [])
  return identity(inputs if isinstance(inputs, list) else [inputs], options)


def _differences(before: dict, now: dict) -> str:
  said = []
  if before.get('inputs') != now['inputs']:
    said.append(f'--input {before.get("inputs")} then, {now["inputs"]} now')
  old, new = before.get('settings') or {}, now['settings']
  for key in sorted(set(old) | set(new)):
    if old.get(key) != new.get(key):
      said.append(f'--{key} {old.get(key, "(default)")} then, {new.get(key, "(default)")} now')
  return '; '.join(said[:4])


def check_compatible(root: root_files.OutputRoot, now: dict, mode: str) -> None:
  """Raises ConfigError when a plain run would mix its images with another export's."""
  if mode not in MODES:
    raise ValueError(mode)
  before = previous_identity(root)
  if before is None or mode != 'plain' or before == now:
    return
  raise errors.ConfigError(
      f'{root.url} holds the images of a different export ({_differences(before, now)}); '
      'a plain run would leave both mixed. Choose a new --output, or add --skip_existing '
      "(keep its images, add this run's), --incremental (nightly runs over new shards), "
      "or --overwrite (replace it: images the earlier export wrote and this one does not "
      'are removed)')


class Claim:
  """The lock on one root, held until release(); start() a run with it."""

  def __init__(self, root: root_files.OutputRoot, run_id: str, lease_seconds: float):
    self.root = root
    self.run_id = run_id
    self._lease_seconds = lease_seconds
    self._fd: Optional[int] = None
    self._stop = threading.Event()
    self._renewer: Optional[threading.Thread] = None
    # A local root this launch made: release() removes it again if it is still empty.
    self.created_root = False

  # -- acquiring ----------------------------------------------------------------------

  def _holder(self) -> dict:
    return {'run_id': self.run_id, 'host': socket.gethostname(), 'pid': os.getpid(),
            'started': _iso(time.time()), 'command': ' '.join(sys.argv)[:500],
            'expires': None if self.root.local else time.time() + self._lease_seconds}

  def acquire(self) -> 'Claim':
    if self.root.local:
      self._acquire_local()
    else:
      self._acquire_lease()
    return self

  def _acquire_local(self) -> None:
    import fcntl  # POSIX only, as local roots are
    path = self.root.path(LOCK)
    os.makedirs(self.root.root, exist_ok=True)
    for _ in range(10):
      fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
          raise
        raise errors.RootBusyError(_busy_message(self.root, _read_holder(self.root)))
      try:
        same = os.fstat(fd).st_ino == os.stat(path).st_ino
      except FileNotFoundError:
        same = False
      if not same:  # the holder released (unlinked) it between our open and flock
        os.close(fd)
        continue
      os.ftruncate(fd, 0)
      os.write(fd, json.dumps(self._holder(), sort_keys=True).encode() + b'\n')
      self._fd = fd
      return
    raise errors.RootBusyError(_busy_message(self.root, _read_holder(self.root)))

  def _acquire_lease(self) -> None:
    fs, path = self.root.fs, self.root.path(LOCK)
    holder = _read_holder(self.root)
    taken_over = False
    if holder is not None:
      if (holder.get('expires') or 0) > time.time():
        raise errors.RootBusyError(_busy_message(self.root, holder))
      # Its holder died: the lease ran out without being renewed. On S3 it is replaced
      # only if it is still the object read (If-Match), so of two runs that found it
      # expired one wins; elsewhere it is removed, then made anew by a conditional create.
      etag = fs.info(path).get('ETag') if 's3' in _protocols(fs) else None
      if etag:
        try:
          fs.pipe_file(path, _lease_bytes(self._holder()), IfMatch=etag)
          taken_over = True
        except OSError as e:
          raise errors.RootBusyError(
              _busy_message(self.root, _read_holder(self.root))) from e
      else:
        try:
          fs.rm_file(path)
        except FileNotFoundError:
          pass
    try:
      if not taken_over:
        fs.pipe_file(path, _lease_bytes(self._holder()), mode='create')
    except FileExistsError:
      raise errors.RootBusyError(_busy_message(self.root, _read_holder(self.root))) from None
    except OSError as e:
      if 'precondition' not in str(e).lower():
        raise
      raise errors.RootBusyError(_busy_message(self.root, _read_holder(self.root))) from None
    now = _read_holder(self.root)  # a store that ignores preconditions: the last writer won
    if now is None or now.get('run_id') != self.run_id:
      raise errors.RootBusyError(_busy_message(self.root, now))
    self._renewer = threading.Thread(target=self._renew, name='unrecord-lease',
                                     daemon=True)
    self._renewer.start()

  def _renew(self) -> None:
    while not self._stop.wait(self._lease_seconds / 3):
      try:
        if (_read_holder(self.root) or {}).get('run_id') == self.run_id:
          self.root.fs.pipe_file(self.root.path(LOCK), _lease_bytes(self._holder()))
      except Exception:  # pylint: disable=broad-except  (the next renewal tries again)
        pass

  # -- the run ------------------------------------------------------------------------

  def start(self, now: dict) -> None:
    """Removes a stale `_SUCCESS` and records this run's identity, before any image."""
    try:
      self.root.fs.rm_file(self.root.path(SUCCESS))
    except FileNotFoundError:
      pass
    data = (json.dumps(now, indent=1, sort_keys=True) + '\n').encode()
    try:
      if self.root.read(IDENTITY) == data:
        return  # the same export again: the file stays as it was, mtime and all
    except FileNotFoundError:
      pass
    self.root.write(IDENTITY, data)

  def __enter__(self) -> 'Claim':
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def release(self, wait: Optional[float] = None) -> None:
    """Gives the root up. `wait`: at most this many seconds for an object store's
    lease to be removed (a store that just failed may not answer); past that, the lease
    ends by itself when it expires."""
    self._stop.set()
    if wait is not None and self._fd is None and not self.root.local:
      remover = threading.Thread(target=release_lease, args=(self.root, self.run_id),
                                 name='unrecord-release', daemon=True)
      remover.start()
      remover.join(wait)
      return
    if self._fd is not None:
      try:
        os.unlink(self.root.path(LOCK))  # while still locked: nobody can lock this inode
      except OSError:
        # Gone already, or the root turned read-only or full mid-run (the fault the run
        # has reported): the file stays, unlocked once closed, and the next run takes it.
        pass
      os.close(self._fd)
      self._fd = None
      if self.created_root:
        try:
          os.rmdir(self.root.root)
        except OSError:
          pass  # it holds what the run wrote
    elif not self.root.local:
      release_lease(self.root, self.run_id)


def claim(root: root_files.OutputRoot, *, lease_seconds: float = LEASE_SECONDS) -> Claim:
  """Takes `root`'s lock for a new run; raises RootBusyError naming the holder."""
  return Claim(root, uuid.uuid4().hex, lease_seconds).acquire()


def claim_root(url: str, storage_options: Optional[dict] = None, *,
               lease_seconds: float = LEASE_SECONDS) -> Claim:
  """Checks that the output root `url` can be written and takes its lock (a Claim, also
  a context manager); raises RootBusyError naming the holder, ConfigError when it cannot
  be written, StorageFault when its store cannot be reached (within a short timeout). A
  local root this makes is removed again on release if the run wrote nothing."""
  root = root_files.open_root(url, storage_options)
  created = root.local and not os.path.isdir(root.root)
  root.check_writable()
  taken = claim(root, lease_seconds=lease_seconds)
  taken.created_root = created
  return taken


def release_lease(root: root_files.OutputRoot, run_id: str) -> None:
  """Removes an object-store lease if `run_id` still holds it (the job's last step)."""
  if root.local:
    return  # the launcher's flock; it goes with the launcher
  try:
    if (_read_holder(root) or {}).get('run_id') == run_id:
      root.fs.rm_file(root.path(LOCK))
  except Exception:  # pylint: disable=broad-except  (the store may be the fault; the
    pass  # lease then ends by itself when it expires)


def _protocols(fs) -> tuple:
  return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def _read_holder(root: root_files.OutputRoot) -> Optional[dict]:
  try:
    if root.local:
      with open(root.path(LOCK), 'rb') as f:
        data = f.read()
    else:
      root.fs.invalidate_cache(root.path(LOCK))
      data = root.fs.cat_file(root.path(LOCK))
  except FileNotFoundError:
    return None
  try:
    return json.loads(data)
  except ValueError:
    return {}


def _lease_bytes(holder: dict) -> bytes:
  return json.dumps(holder, sort_keys=True).encode() + b'\n'


def _busy_message(root: root_files.OutputRoot, holder: Optional[dict]) -> str:
  holder = holder or {}
  who = (f'pid {holder.get("pid")} on {holder.get("host")}, started {holder.get("started")}'
         if holder.get('pid') else 'a run that is still starting')
  expires = holder.get('expires')
  after = (f'; its lease ends at {_iso(expires)} unless renewed' if expires else '')
  return (f'another unrecord run is writing to {root.url} ({who}{after}); wait for it to '
          'finish, or choose another --output. Two runs into one root would mix their '
          'images')


def _iso(epoch: float) -> str:
  return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(
      timespec='seconds')
