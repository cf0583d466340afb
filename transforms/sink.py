"""Writing files under an output root so a final path never holds a partial file.

Local disk: write a hidden temp file in the same folder, then rename it over the final
name (atomic on POSIX). Object stores and other fsspec filesystems: one single-shot
upload (`pipe_file`), which the store makes visible whole or not at all. fsspec's
`with fs.open(path, 'wb')` is never used for outputs: it commits the file even when the
block raises, leaving a partial file at the final path.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import time
import uuid
from typing import List, Optional

from transforms import errors
from transforms import storage

TEMP_SUFFIX = '.unrecord-tmp'


class OutputRoot:
  """An output folder on any fsspec filesystem. Create one per DoFn in `setup()`."""

  def __init__(self, url: str, storage_options: Optional[storage.StorageOptions] = None):
    self.url = url.rstrip('/') or url
    self.fs, self.root = storage.filesystem(self.url, storage_options)
    self.root = self.root.rstrip('/') or '/'
    self.local = storage.is_local(self.fs)
    self._made_dirs = set()

  def path(self, relative: str) -> str:
    return posixpath.join(self.root, relative)

  def url_of(self, relative: str) -> str:
    return storage.to_url(self.fs, self.path(relative))

  def exists(self, relative: str) -> bool:
    return self.fs.exists(self.path(relative))

  def read(self, relative: str) -> bytes:
    return self.fs.cat_file(self.path(relative))

  def write(self, relative: str, data: bytes) -> None:
    """Writes `data` to `relative` atomically; raises DecodeError(write_error)."""
    target = self.path(relative)
    try:
      if self.local:
        self._write_local(target, data)
      else:
        self.fs.pipe_file(target, data)
    except OSError as e:
      raise errors.DecodeError(
          errors.WRITE_ERROR,
          f'cannot write {self.url_of(relative)} ({type(e).__name__}: {e})') from e

  def _write_local(self, target: str, data: bytes) -> None:
    folder = os.path.dirname(target)
    if folder not in self._made_dirs:
      os.makedirs(folder, exist_ok=True)
      self._made_dirs.add(folder)
    temp = os.path.join(folder, f'.{os.path.basename(target)[:80]}.'
                        f'{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}')
    try:
      with open(temp, 'wb') as f:
        f.write(data)
      os.replace(temp, target)
    except BaseException:
      try:
        os.unlink(temp)
      except OSError:
        pass
      raise

  def check_writable(self) -> None:
    """Writes and removes a probe file; raises ConfigError naming the root and reason."""
    probe = f'_unrecord_probe_{uuid.uuid4().hex[:12]}'
    try:
      if self.local:
        os.makedirs(self.root, exist_ok=True)
      self.write(probe, b'')
      self.fs.rm_file(self.path(probe))
    except (OSError, errors.UnrecordError) as e:
      reason = e.message if isinstance(e, errors.UnrecordError) else str(e)
      raise errors.ConfigError(
          f'the output {self.url!r} cannot be written: {reason}') from None

  def remove_temp_debris(self, older_than: Optional[float] = None) -> List[str]:
    """Deletes temp files a killed run left behind (local roots only); returns them."""
    if not self.local or not os.path.isdir(self.root):
      return []
    removed = []
    cutoff = time.time() if older_than is None else older_than
    for folder, _, files in os.walk(self.root):
      for name in files:
        if name.endswith(TEMP_SUFFIX):
          path = os.path.join(folder, name)
          try:
            if os.path.getmtime(path) <= cutoff:
              os.unlink(path)
              removed.append(path)
          except OSError:
            pass
    return removed


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()
