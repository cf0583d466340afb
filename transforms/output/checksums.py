"""The checksums a manifest row can carry for its file: sha256, crc32c or blake3.

Each is written as lowercase hex in a column named after it (docs/output.md, "The manifest").
crc32c is the one object stores keep themselves: GCS for every object, S3 when the
upload sends it, both as base64 of its 4 big-endian bytes (`crc32c_hex`, `crc32c_base64`
convert), so `unrecord verify` can compare a row against the store without reading the
file (transforms/output/verify.py).
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import BinaryIO, Tuple

import blake3
import google_crc32c

ALGORITHMS = ('sha256', 'crc32c', 'blake3')
DEFAULT = 'sha256'
# Bytes hashed at a time when a file is streamed.
READ_BYTES = 1 << 20


def check(algorithm: str) -> str:
  if algorithm not in ALGORITHMS:
    raise ValueError(f'--checksum must be one of {", ".join(ALGORITHMS)}, not '
                     f'{algorithm!r}')
  return algorithm


def _hasher(algorithm: str):
  if algorithm == 'sha256':
    return hashlib.sha256()
  if algorithm == 'crc32c':
    return google_crc32c.Checksum()
  if algorithm == 'blake3':
    return blake3.blake3()
  raise ValueError(f'unknown checksum {algorithm!r}')


def digest(data: bytes, algorithm: str = DEFAULT) -> str:
  """`data`'s checksum as lowercase hex (crc32c: its 4 bytes, big-endian)."""
  if algorithm == 'sha256':
    return hashlib.sha256(data).hexdigest()
  if algorithm == 'crc32c':
    return f'{google_crc32c.value(data):08x}'
  hasher = _hasher(algorithm)
  hasher.update(data)
  return hasher.hexdigest()


def stream_digest(f: BinaryIO, algorithm: str = DEFAULT) -> str:
  """The checksum of what is left to read in `f`, READ_BYTES at a time."""
  hasher = _hasher(algorithm)
  while True:
    block = f.read(READ_BYTES)
    if not block:
      break
    hasher.update(block)
  return hasher.digest().hex() if algorithm == 'crc32c' else hasher.hexdigest()


def fd_digest(fd: int, algorithm: str = DEFAULT) -> Tuple[str, int]:
  """(checksum, size) of what is left to read in the open file `fd`. A small file is
  one read and one digest: no file object, no hasher (half the cost on 1 KB files)."""
  block = os.read(fd, READ_BYTES)
  rest = os.read(fd, READ_BYTES) if block else b''
  if not rest:
    return digest(block, algorithm), len(block)
  hasher, size = _hasher(algorithm), 0
  while block:
    hasher.update(block)
    size += len(block)
    block, rest = rest, (os.read(fd, READ_BYTES) if rest else b'')
  return (hasher.digest().hex() if algorithm == 'crc32c' else hasher.hexdigest()), size


def crc32c_base64(hex_digest: str) -> str:
  """A crc32c in hex as object stores write it: base64 of its 4 big-endian bytes."""
  return base64.b64encode(bytes.fromhex(hex_digest)).decode('ascii')


def crc32c_hex(base64_digest: str) -> str:
  """An object store's base64 crc32c as hex."""
  return base64.b64decode(base64_digest).hex()
