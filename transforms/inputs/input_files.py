"""Files through fsspec: expanding input patterns, opening inputs, per-protocol settings.

Local paths, directories, globs, gs://, s3://, memory:// and any other fsspec URL behave the
same. Filesystem settings come from fsspec's own configuration (FSSPEC_* environment
variables, config files) merged with `storage_options`, a mapping of protocol -> kwargs.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import posixpath
import re
from typing import BinaryIO, Dict, List, Mapping, Optional, Sequence, Tuple

import fsspec
from fsspec.core import split_protocol

from transforms import errors
from transforms.inputs import stores

StorageOptions = Mapping[str, Mapping[str, object]]

_GLOB_CHARS = re.compile(r'[*?\[]')
_LOCAL_PROTOCOLS = ('file', 'local')
# Checksums of an object's content that object stores put in their listings and `info`:
# GCS md5Hash and crc32c, S3 ETag.
CONTENT_KEYS = ('md5Hash', 'crc32c', 'ETag', 'etag')

Checksums = Tuple[Tuple[str, str], ...]


@dataclasses.dataclass(frozen=True, order=True)
class InputFile:
  """One input file. `in_folder`: found by listing a folder the user named, so a file
  that holds no TFRecord is skipped (`record_ranges.plan_file`), not a failure. `checksums`: the
  content checksums its listing gave (empty where the store gives none: local disk)."""
  url: str
  size: int
  in_folder: bool = False
  checksums: Checksums = dataclasses.field(default=(), compare=False)


def content_checksums(info: Mapping[str, object]) -> Checksums:
  """The content checksums in one `info` or listing entry, keys lower-cased, quotes off
  (S3 quotes its ETags)."""
  return tuple((key.lower(), str(info[key]).strip('"'))
               for key in CONTENT_KEYS if info.get(key) is not None)


def protocol_of(url: str) -> str:
  protocol, _ = split_protocol(url)
  return protocol or 'file'


def filesystem(url: str, storage_options: Optional[StorageOptions] = None,
               role: str = 'input') -> Tuple[fsspec.AbstractFileSystem, str]:
  """(filesystem, path within it) for a URL, with the options for its protocol.
  StorageFault (one line, naming the URL as the `role` it plays: 'input' or 'output')
  when no installed filesystem serves its protocol."""
  options = dict((storage_options or {}).get(protocol_of(url), {}))
  try:
    fs, path = fsspec.core.url_to_fs(url, **options)
  except (ValueError, ImportError) as e:
    unknown = stores.protocol_unknown(url, e)
    if unknown is None:
      raise
    what = 'cannot be read' if role == 'input' else 'cannot be used'
    raise errors.StorageFault(f'the {role} {url!r} {what}: {unknown}') from None
  return fs, path


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
  protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
  return any(p in _LOCAL_PROTOCOLS for p in protocols)


def to_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
  """A URL for `path` that names its filesystem; local files stay plain paths."""
  if is_local(fs):
    return path
  return fs.unstrip_protocol(path)


def location(url: str, storage_options: Optional[StorageOptions] = None
             ) -> Tuple[str, str]:
  """(protocol, normalized absolute path) of a URL, for telling whether two name the same
  place: a local path is resolved (relative parts, symlinks); a URL keeps its protocol
  and its path, normalized."""
  fs, path = filesystem(url, storage_options)
  if is_local(fs):
    return 'file', os.path.realpath(path)
  protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
  return protocols[0], posixpath.normpath('/' + path.lstrip('/'))


def is_within(place: Tuple[str, str], folder: Tuple[str, str]) -> bool:
  """Whether `place` is `folder` or under it (both from `location`)."""
  if place[0] != folder[0]:
    return False
  root = folder[1].rstrip('/') or '/'
  return place[1] == root or place[1].startswith(root.rstrip('/') + '/')


def literal_prefix(pattern: str) -> str:
  """The part of a pattern before its first glob character, cut back to a whole folder
  name (the pattern itself when it has none)."""
  match = _GLOB_CHARS.search(pattern)
  if not match:
    return pattern
  before = pattern[:match.start()]
  return before.rsplit('/', 1)[0] if '/' in before else '.'


def has_glob(pattern: str) -> bool:
  return bool(_GLOB_CHARS.search(filesystem(pattern)[1] if '://' in pattern else pattern))


def split_patterns(values: Sequence[str]) -> List[str]:
  """Flattens repeated and comma-separated pattern arguments."""
  patterns = []
  for value in values:
    patterns += [p.strip() for p in str(value).split(',') if p.strip()]
  return patterns


def _directory_files(fs, path: str) -> Dict[str, dict]:
  """Every file under a folder but hidden and `_` ones (`_SUCCESS`, `.crc`, `_logs/`):
  which of them hold TFRecords is read from their content, not guessed from names."""
  found = fs.find(path, detail=True)
  return {p: info for p, info in found.items()
          if info.get('type') != 'directory' and not in_hidden_folder(path, p)}


def in_hidden_folder(folder: str, path: str) -> bool:
  """Whether a folder input skips `path` (under `folder`) by its name: it, or a folder
  between, starts with '.' or '_'."""
  relative = posixpath.relpath(path.rstrip('/'), folder.rstrip('/') or '/')
  return any(part.startswith(('.', '_')) for part in relative.split('/'))


def expand_pattern(pattern: str, storage_options: Optional[StorageOptions] = None
                   ) -> List[InputFile]:
  """Files one pattern names: a file, a directory (its TFRecord shards), or a glob."""
  fs, path = filesystem(pattern, storage_options)
  in_folder = False
  if _GLOB_CHARS.search(path):
    found = fs.glob(path, detail=True)
    files = {p: info for p, info in found.items() if info.get('type') != 'directory'}
  elif fs.isdir(path):
    files, in_folder = _directory_files(fs, path), True
  elif fs.exists(path):
    files = {path: fs.info(path)}
  else:
    files = {}
  if not files:
    raise errors.ConfigError(_nothing_matched(fs, path, pattern))
  return [InputFile(to_url(fs, p), int(info.get('size') or 0), in_folder,
                    content_checksums(info))
          for p, info in sorted(files.items())]


def expand_patterns(patterns: Sequence[str],
                    storage_options: Optional[StorageOptions] = None) -> List[InputFile]:
  """Files all patterns name, each once, in a stable order."""
  patterns = split_patterns(patterns)
  if not patterns:
    raise errors.ConfigError('no input given; pass --input PATTERN')
  seen: Dict[str, InputFile] = {}
  for pattern in patterns:
    for item in expand_pattern(pattern, storage_options):
      if item.url not in seen or not item.in_folder:  # named outright: always read
        seen[item.url] = item
  undecodable = [url for url in seen if not _is_utf8(url)]
  if undecodable:
    # Such a name comes from a local file name in another encoding (Python keeps its
    # bytes as lone surrogates); the manifest, dead letter and report are UTF-8 JSON.
    shown = ', '.join(os.fsencode(url).decode('utf-8', 'backslashreplace')
                      for url in undecodable[:5])
    raise errors.ConfigError(
        f'{len(undecodable)} input file name(s) are not valid UTF-8, which the manifest '
        f'and report record paths in: {shown}; rename them (e.g. convmv) and run again')
  return sorted(seen.values())


def _is_utf8(text: str) -> bool:
  try:
    text.encode('utf-8')
  except UnicodeEncodeError:
    return False
  return True


def _nothing_matched(fs, path: str, pattern: str) -> str:
  parent = path
  while _GLOB_CHARS.search(parent) or not _safe_isdir(fs, parent):
    new_parent = posixpath.dirname(parent.rstrip('/'))
    if new_parent == parent or not new_parent:
      return f'nothing matched --input {pattern!r} and no parent folder of it exists'
    parent = new_parent
  try:
    entries = sorted(posixpath.basename(p.rstrip('/')) for p in fs.ls(parent, detail=False))
  except OSError:
    entries = []
  shown = ', '.join(entries[:12]) + (f', ... ({len(entries)} entries)'
                                      if len(entries) > 12 else '')
  holds = f'it holds: {shown}' if entries else 'it is empty'
  return (f'nothing matched --input {pattern!r}; the nearest existing folder is '
          f'{to_url(fs, parent)!r} and {holds}')


def _safe_isdir(fs, path: str) -> bool:
  try:
    return fs.isdir(path)
  except OSError:
    return False


def read_heads(urls: Sequence[str], n: int,
               storage_options: Optional[StorageOptions] = None) -> List[Optional[bytes]]:
  """The first `n` bytes of each file (fewer in a shorter one); None where it cannot be
  read. An object store's are fetched in one concurrent batch (`cat_ranges`)."""
  heads: List[Optional[bytes]] = [None] * len(urls)
  by_store: Dict[str, List[int]] = {}
  for i, url in enumerate(urls):
    by_store.setdefault(protocol_of(url), []).append(i)
  for indices in by_store.values():
    fs, _ = filesystem(urls[indices[0]], storage_options)
    paths = [filesystem(urls[i], storage_options)[1] for i in indices]
    if is_local(fs):
      for i, path in zip(indices, paths):
        try:
          with open(path, 'rb') as f:
            heads[i] = f.read(n)
        except OSError:
          pass
      continue
    try:
      found = fs.cat_ranges(paths, [0] * len(paths), [n] * len(paths), on_error='return')
    except Exception:  # pylint: disable=broad-except  (then each file's read will say)
      continue
    for i, head in zip(indices, found):
      heads[i] = bytes(head) if isinstance(head, (bytes, bytearray)) else None
  return heads


LOCAL_BUFFER = 64 << 10


def open_input(url: str, storage_options: Optional[StorageOptions] = None,
               block_size: int = 8 << 20, local_buffer: int = LOCAL_BUFFER) -> BinaryIO:
  """A seekable binary stream for an input file.

  Local files get a 64 KiB buffer (`local_buffer`; 0: unbuffered, each read a system
  call of its own): reads bigger than that go straight to the caller, and an index pass
  skipping from header to header does not read a megabyte per record it then throws
  away (measured: 1 MiB buffers made planning 4,000 600 KB records 1.5 s). Other
  filesystems read ahead `block_size` bytes.
  """
  fs, path = filesystem(url, storage_options)
  if is_local(fs):
    return open(path, 'rb', buffering=local_buffer)
  return fs.open(path, 'rb', block_size=block_size, cache_type='readahead')


def check_reachable(patterns: Sequence[str], storage_options: Optional[StorageOptions] = None,
                    timeout: float = 5.0) -> None:
  """Before any listing: StorageFault for a pattern whose protocol no filesystem serves,
  or whose store cannot be reached (connecting, within `timeout`)."""
  tried = set()
  for pattern in split_patterns(patterns):
    fs, _ = filesystem(pattern, storage_options)
    endpoint = stores.endpoint_of(fs)
    if is_local(fs) or endpoint in tried:
      continue
    tried.add(endpoint)
    try:
      stores.within(2 * timeout, functools.partial(stores.check_reachable, fs, timeout),
                    pattern)
    except stores.Unreachable as e:
      raise errors.StorageFault(
          f'the input {pattern!r} cannot be reached: {e}; {stores.WHAT_TO_CHECK}; '
          'nothing was written') from None
