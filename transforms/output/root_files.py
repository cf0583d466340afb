"""Writing files under an output root so a final path never holds a partial file.

Local disk: write a hidden temp file in the same folder, then rename it over the final
name (atomic on POSIX). Object stores and other fsspec filesystems: one single-shot
upload (`pipe_file`), which the store makes visible whole or not at all. fsspec's
`with fs.open(path, 'wb')` is never used for outputs: it commits the file even when the
block raises, leaving a partial file at the final path.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import itertools
import os
import re
import shutil
import tempfile
import time
import uuid
from typing import BinaryIO, Iterator, List, Optional

import google_crc32c

from transforms import errors
from transforms.inputs import input_files
from transforms.inputs import stores
from transforms.output import naming

TEMP_SUFFIX = naming.TEMP_SUFFIX
# Exactly the names `_local_temp` makes; the sweep removes nothing else. No output name can
# match: data values lose leading dots, and naming refuses segments ending in TEMP_SUFFIX.
_TEMP_NAME = re.compile(r'\..*\.[0-9a-f]{9,}-[0-9]+' + re.escape(TEMP_SUFFIX) + r'\Z',
                        re.S)
# Write errors that belong to one name, not to the storage: the image is dead-lettered.
_NAME_ERRNOS = frozenset((errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.EINVAL,
                          errno.EILSEQ, errno.EEXIST, errno.ENOTEMPTY))
_ADVICE = {
    errno.ENOSPC: 'free space on the output storage',
    errno.EDQUOT: 'free space or raise the quota on the output storage',
    errno.EROFS: 'make the output root writable or choose another --output',
    errno.EACCES: 'make the output root writable or choose another --output',
    errno.EPERM: 'make the output root writable or choose another --output',
}
# An object store's launch check: connecting to its endpoint, and the whole check (the
# probe file written and removed), at most this long. A store that has not answered by
# then is reported unreachable, in one line, instead of after its client's retries.
CONNECT_SECONDS = 5.0
LAUNCH_CHECK_SECONDS = 10.0
# Temp names: this process's random prefix and a counter (cheaper than a uuid per file;
# the prefix keeps processes on other machines sharing a filesystem apart).
_TEMP_PREFIX = uuid.uuid4().hex[:8]
_temp_counter = itertools.count()


class OutputRoot:
  """An output folder on any fsspec filesystem. Create one per DoFn in `setup()`."""

  def __init__(self, url: str, storage_options: Optional[input_files.StorageOptions] = None,
               *, store_crc32c: bool = False):
    self.url = url.rstrip('/') or url
    self.fs, self.root = input_files.filesystem(self.url, storage_options, role='output')
    # --checksum crc32c on S3: each upload sends its crc32c, so the store keeps it (GCS
    # keeps one for every object by itself) and `unrecord verify` reads it from there.
    self._send_crc32c = store_crc32c and 's3' in _protocols(self.fs)
    self.root = self.root.rstrip('/') or '/'
    self.local = input_files.is_local(self.fs)
    self._made_dirs = set()
    self._prefix = self.root if self.root.endswith('/') else self.root + '/'

  def path(self, relative: str) -> str:
    """posixpath.join(root, relative), without its cost on every image."""
    return relative if relative.startswith('/') else self._prefix + relative

  def url_of(self, relative: str) -> str:
    return input_files.to_url(self.fs, self.path(relative))

  def exists(self, relative: str) -> bool:
    return self.fs.exists(self.path(relative))

  def read(self, relative: str) -> bytes:
    return self.fs.cat_file(self.path(relative))

  def write(self, relative: str, data: bytes) -> None:
    """Writes `data` to `relative` atomically; raises WriteError(write_error)."""
    target = self.path(relative)
    try:
      if self.local:
        self._write_local(target, data)
      elif self._send_crc32c:  # botocore computes crc32c only with awscrt: sent here
        self.fs.pipe_file(target, data, ChecksumAlgorithm='CRC32C',
                          ChecksumCRC32C=base64.b64encode(google_crc32c.value(
                              data).to_bytes(4, 'big')).decode('ascii'))
      else:
        self.fs.pipe_file(target, data)
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(relative, e) from e

  def _write_error(self, relative: str, error: Exception) -> Exception:
    """WriteError(write_error) when the name is at fault, else a StorageFault."""
    code = error_code(error)
    if code in _NAME_ERRNOS:
      return errors.WriteError(
          errors.WRITE_ERROR,
          f'cannot write {self.url_of(relative)} ({type(error).__name__}: {error})')
    return storage_fault(f'cannot write {self.url_of(relative)}', error)

  def _write_local(self, target: str, data: bytes) -> None:
    with self._renamed_into_place(target) as temp:
      fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
      try:
        written = os.write(fd, data)
        if written < len(data):  # rare: a short write, then the rest
          view = memoryview(data)[written:]
          while view:
            view = view[os.write(fd, view):]
      finally:
        os.close(fd)

  def _renamed_into_place(self, target: str) -> '_RenamedIntoPlace':
    """A temp path beside `target`, renamed over it when the block ends, else removed."""
    return _RenamedIntoPlace(self._local_temp(target), target)

  def _local_temp(self, target: str) -> str:
    """A fresh hidden temp name beside `target`, whose folder is made if needed."""
    folder, _, name = target.rpartition('/')  # os.path.split's cost, without its tidying
    if folder not in self._made_dirs:
      os.makedirs(folder or '/', exist_ok=True)
      self._made_dirs.add(folder)
    return (f'{folder}/.{name[:80]}.{_TEMP_PREFIX}{os.getpid():x}-{next(_temp_counter)}'
            f'{TEMP_SUFFIX}')

  @contextlib.contextmanager
  def open_write(self, relative: str) -> Iterator[BinaryIO]:
    """A file to stream `relative` into; it appears whole when the block ends, or never.

    Local: a temp file renamed into place. Elsewhere: a local spool file, uploaded in one
    `put_file` when the block ends (a store shows an upload whole or not at all).
    """
    target = self.path(relative)
    if self.local:
      try:
        with self._renamed_into_place(target) as temp:
          with open(temp, 'wb', buffering=1 << 20) as f:
            yield f
      except OSError as e:  # a full disk, say, while the block wrote
        raise self._write_error(relative, e) from e
      return
    with tempfile.TemporaryDirectory(prefix='unrecord-') as spool:
      local = os.path.join(spool, 'upload')
      try:
        with open(local, 'wb', buffering=1 << 20) as f:
          yield f
      except OSError as e:  # the spool's disk is full, say
        raise self._write_error(relative, e) from e
      try:
        self.fs.put_file(local, target)
      except Exception as e:  # pylint: disable=broad-except
        raise self._write_error(relative, e) from e

  def open_read(self, relative: str, buffer: int = 1 << 20) -> BinaryIO:
    """`relative` opened to read, `buffer` bytes read ahead (on object stores, the
    fewest bytes a request fetches)."""
    if self.local:
      return open(self.path(relative), 'rb', buffering=buffer)
    return self.fs.open(self.path(relative), 'rb', block_size=buffer)

  def remove_tree(self, relative: str) -> None:
    """Deletes the folder `relative` and all it holds; a missing one is fine."""
    path = self.path(relative)
    if self.local:
      shutil.rmtree(path, ignore_errors=True)
      self._made_dirs = {d for d in self._made_dirs
                         if d != path and not d.startswith(path + '/')}
      return
    try:
      self.fs.rm(path, recursive=True)
    except FileNotFoundError:
      pass

  def check_writable(self, timeout: float = LAUNCH_CHECK_SECONDS) -> None:
    """Writes and removes a probe file (on an object store within `timeout` seconds).

    Raises StorageFault (exit 3) when the store cannot be reached, saying why and what to
    check; ConfigError (exit 2) naming the root and reason when it cannot be written.
    """
    probe = f'_unrecord_probe_{uuid.uuid4().hex[:12]}'
    try:
      if self.local:
        os.makedirs(self.root, exist_ok=True)
        self.write(probe, b'')
        self.fs.rm_file(self.path(probe))
        return

      def write_and_remove():
        stores.check_reachable(self.fs, min(CONNECT_SECONDS, timeout))
        self.fs.pipe_file(self.path(probe), b'')
        self.fs.rm_file(self.path(probe))

      with stores.quiet_clients():
        stores.within(timeout, write_and_remove, self.url)
    except Exception as e:  # pylint: disable=broad-except  (each is said in one line)
      error = e.__cause__ if isinstance(e, (errors.WriteError, errors.StorageFault)) and \
          e.__cause__ is not None else e
      unreachable = stores.unreachable_cause(error)
      if unreachable:
        raise errors.StorageFault(
            f'the output {self.url!r} cannot be reached: {unreachable}; '
            f'{stores.WHAT_TO_CHECK}; nothing was written') from None
      cause, advice = _cause_and_advice(error, self.local)
      raise errors.ConfigError(
          f'the output {self.url!r} cannot be written: {cause}; {advice}') from None

  def remove_temp_debris(self, older_than: Optional[float] = None) -> List[str]:
    """Deletes temp files a killed run left behind (local roots only); returns them."""
    if not self.local or not os.path.isdir(self.root):
      return []
    removed = []
    cutoff = time.time() if older_than is None else older_than
    for entry in _files_under(self.root):
      if entry.name.startswith('.') and _TEMP_NAME.match(entry.name):
        try:
          if entry.stat(follow_symlinks=False).st_mtime <= cutoff:
            os.unlink(entry.path)
            removed.append(entry.path)
        except OSError:
          pass
    return removed


def _files_under(folder: str) -> Iterator[os.DirEntry]:
  """Every entry under `folder` that is not a folder, as `os.walk` finds them (symlinked
  folders not followed, unreadable ones skipped), streamed: a root of 10^6 images is
  never held as a list of its names."""
  try:
    entries = os.scandir(folder)
  except OSError:
    return
  with entries:
    for entry in entries:
      try:
        is_dir = entry.is_dir()
      except OSError:
        is_dir = False
      if not is_dir:
        yield entry
      elif not entry.is_symlink():
        yield from _files_under(entry.path)


def _protocols(fs) -> tuple:
  protocol = fs.protocol
  return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def is_temp_name(path: str) -> bool:
  """Whether `path`'s last segment is one of the temp names writes go through."""
  return bool(_TEMP_NAME.match(path.rpartition('/')[2]))


def error_code(error: BaseException) -> Optional[int]:
  """An OSError's errno; pyarrow's carry it only in their message ('[Errno 28] ...')."""
  if not isinstance(error, OSError):
    return None
  if error.errno:
    return error.errno
  found = re.search(r'\[Errno (\d+)\]', str(error))
  return int(found.group(1)) if found else None


def open_root(url: str, storage_options: Optional[input_files.StorageOptions] = None
              ) -> OutputRoot:
  """The OutputRoot for --output `url`; StorageFault (exit 3, as for a store that is down)
  when no filesystem serves its protocol (fsspec knows none, or its package is not
  installed: `input_files.filesystem` says which)."""
  return OutputRoot(url, storage_options)


def _cause_and_advice(error: BaseException, local: bool = True):
  """(what failed, what to do) for a storage error, in words."""
  unreachable = stores.unreachable_cause(error)
  if unreachable:
    return unreachable, 'check that the output storage is reachable and writable'
  code = error_code(error)
  cause = (f'{os.strerror(code)} ({errno.errorcode.get(code, code)})'
           if code else f'{type(error).__name__}: {error}')
  if not local and (isinstance(error, PermissionError) or code in (errno.EACCES,
                                                                    errno.EPERM)):
    return cause, ('check the credentials and their access to the output (the '
                   'environment or --storage_options)')
  return cause, _ADVICE.get(code, 'check that the output storage is reachable and writable')


def storage_fault(what: str, error: BaseException) -> errors.StorageFault:
  """A StorageFault for `what` failing with `error`: the cause in words, then what to do."""
  cause, advice = _cause_and_advice(error)
  return errors.StorageFault(
      f'{what}: {cause}; {advice}, then run the same command with --skip_existing to '
      'finish')


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


class _RenamedIntoPlace:
  """`OutputRoot._renamed_into_place`'s context. A class, not a generator context,
  which costs more per file (docs/benchmarks.md)."""

  __slots__ = ('temp', 'target')

  def __init__(self, temp: str, target: str):
    self.temp, self.target = temp, target

  def __enter__(self) -> str:
    return self.temp

  def __exit__(self, error_type, error, traceback) -> bool:
    if error_type is None:
      try:
        os.replace(self.temp, self.target)
        return False
      except BaseException:
        _remove_quietly(self.temp)
        raise
    _remove_quietly(self.temp)
    return False  # the block's error goes on


def _remove_quietly(path: str) -> None:
  try:
    os.unlink(path)
  except OSError:
    pass
