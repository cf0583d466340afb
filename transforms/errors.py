"""Typed errors with a reason code and the place in the input they came from.

Every failure unrecord reports carries a stable `reason` (for counters, dead-letter rows
and exit summaries) and, where known, the source file, record index and byte offset.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

# Stable reason codes. Dead-letter rows, Beam counters and summaries use these strings.
CRC_MISMATCH = 'crc_mismatch'
TRUNCATED = 'truncated'
RECORD_TOO_LARGE = 'record_too_large'
PROTO_PARSE = 'proto_parse'
MISSING_FEATURE = 'missing_feature'
UNSUPPORTED_DTYPE = 'unsupported_dtype'
SHAPE_MISMATCH = 'shape_mismatch'
TOO_MANY_PIXELS = 'too_many_pixels'
NON_FINITE = 'non_finite'
DECODE_ERROR = 'decode_error'
ENCODE_ERROR = 'encode_error'
WRITE_ERROR = 'write_error'
UNSAFE_NAME = 'unsafe_name'
NAME_COLLISION = 'name_collision'
READ_ERROR = 'read_error'
NOT_TFRECORD = 'not_tfrecord'  # a whole file that holds no TFRecord frame at all

REASONS = (
    CRC_MISMATCH, TRUNCATED, RECORD_TOO_LARGE, PROTO_PARSE, MISSING_FEATURE,
    UNSUPPORTED_DTYPE, SHAPE_MISMATCH, TOO_MANY_PIXELS, NON_FINITE, DECODE_ERROR,
    ENCODE_ERROR, WRITE_ERROR, UNSAFE_NAME, NAME_COLLISION, READ_ERROR, NOT_TFRECORD)


class UnrecordError(Exception):
  """Base of every error unrecord raises about the data it reads."""

  def __init__(
      self,
      reason: str,
      message: str,
      *,
      path: Optional[str] = None,
      index: Optional[int] = None,
      offset: Optional[int] = None):
    super().__init__(message)
    self.reason = reason
    self.message = message
    self.path = path
    self.index = index
    self.offset = offset

  def at(self, path: Optional[str], index: Optional[int],
         offset: Optional[int]) -> 'UnrecordError':
    """Fills in the location where the raiser did not know it; returns self."""
    self.path = self.path if self.path is not None else path
    self.index = self.index if self.index is not None else index
    self.offset = self.offset if self.offset is not None else offset
    return self

  def __str__(self) -> str:
    where = []
    if self.path is not None:
      where.append(self.path)
    if self.index is not None:
      where.append(f'record {self.index}')
    if self.offset is not None:
      where.append(f'byte {self.offset}')
    prefix = f'[{self.reason}] ' + (', '.join(where) + ': ' if where else '')
    return prefix + self.message

  def __reduce__(self):
    # Keyword-only arguments do not survive the default exception pickling.
    return (_rebuild, (type(self), self.reason, self.message, self.path,
                       self.index, self.offset))


def _rebuild(cls, reason, message, path, index, offset):
  error = cls.__new__(cls)
  UnrecordError.__init__(
      error, reason, message, path=path, index=index, offset=offset)
  return error


class CorruptRecordError(UnrecordError):
  """The TFRecord framing is damaged: bad CRC, short read or absurd length."""


class DecodeError(UnrecordError):
  """A record's payload does not hold an image unrecord can decode."""


class NamingError(UnrecordError):
  """An image's output name cannot be made: a field it needs is missing, or the name
  would leave the output root (`unsafe_name`)."""


class EncodeError(UnrecordError):
  """The encoder refused the image (`encode_error`)."""


class WriteError(UnrecordError):
  """The image's file cannot be written under its name (`write_error`); faults of the
  storage itself are StorageFault."""


class ConfigError(ValueError):
  """The user's options or the data's schema do not fit; raised before a run starts."""


class RootBusyError(ConfigError):
  """Another run holds the output root's lock."""


class StorageFault(Exception):
  """The output storage itself failed (disk full, read-only, store gone): not one image's
  fault, so the run stops instead of dead-lettering every image after it.

  Its text crosses the runner inside the runner's own error; `cause_in` finds it there.
  """

  MARKER = 'unrecord storage fault: '

  def __init__(self, message: str):
    super().__init__(message)
    self.message = message

  def __str__(self) -> str:
    return self.MARKER + self.message

  def __reduce__(self):
    return (StorageFault, (self.message,))

  @classmethod
  def cause_in(cls, text: str) -> Optional[str]:
    """The message of the first StorageFault named in a runner's error text, else None."""
    at = text.find(cls.MARKER)
    if at < 0:
      return None
    message = text[at + len(cls.MARKER):]
    for end in (' [while running', '\n', '\\n'):
      message = message.split(end, 1)[0]
    return message.strip()


@dataclasses.dataclass(frozen=True)
class Failure:
  """One dead-letter row: what failed, where, and the bytes needed to replay it."""
  reason: str
  stage: str
  message: str
  path: Optional[str] = None
  index: Optional[int] = None
  offset: Optional[int] = None
  n: Optional[int] = None
  images: int = 1
  payload: Optional[bytes] = None

  @classmethod
  def from_error(
      cls,
      error: UnrecordError,
      stage: str,
      *,
      n: Optional[int] = None,
      images: int = 1,
      payload: Optional[bytes] = None) -> 'Failure':
    return cls(
        reason=error.reason,
        stage=stage,
        message=error.message,
        path=error.path,
        index=error.index,
        offset=error.offset,
        n=n,
        images=images,
        payload=payload)

  def to_row(self) -> dict:
    """The JSON-ready dead-letter row (the payload goes to the replay file instead)."""
    return {
        'reason': self.reason,
        'stage': self.stage,
        'source': self.path,
        'index': self.index,
        'offset': self.offset,
        'n': self.n,
        'images': self.images,
        'message': self.message,
    }
