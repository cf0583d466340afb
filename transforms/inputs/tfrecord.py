"""TFRecord framing without TensorFlow: reading with resync, range planning, writing.

A TFRecord file is a sequence of frames:

    uint64 length (little-endian) | uint32 masked_crc32c(length) | payload | uint32 masked_crc32c(payload)

`read_records` walks the frames of a byte range and yields either a `(RecordRef, payload)`
pair or a `CorruptRecordError` *value* for each slot, so a caller can dead-letter damage and
keep going. After a damaged header it resynchronises: it scans forward for the next position
whose length CRC and payload CRC both verify. Each damaged stretch is one slot and takes one
record index, so on intact files indices equal TensorFlow's record numbers.

`plan_ranges` runs the same walk over headers only (seeking past payloads) and cuts a file
into ranges that start on frame boundaries, each with the index of its first record. Range
readers therefore agree exactly with a whole-file read.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import struct
import zlib
from typing import BinaryIO, Iterator, List, Optional, Tuple, Union

import google_crc32c

from transforms import errors

HEADER_SIZE = 12  # length + masked CRC of the length
FOOTER_SIZE = 4  # masked CRC of the payload
FRAME_OVERHEAD = HEADER_SIZE + FOOTER_SIZE
DEFAULT_MAX_RECORD_SIZE = 256 * 1024 * 1024
_MASK_DELTA = 0xA282EAD8
_SCAN_CHUNK = 1 << 16

COMPRESSIONS = ('auto', 'none', 'gzip', 'zlib')
_EXTENSIONS = {'.gz': 'gzip', '.gzip': 'gzip', '.zz': 'zlib', '.zlib': 'zlib'}

_U64_U32 = struct.Struct('<QI')
_U32 = struct.Struct('<I')
_U64 = struct.Struct('<Q')


def masked_crc(data) -> int:
  """TFRecord's masked CRC32C of `data` (bytes-like)."""
  crc = google_crc32c.value(data)
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def frame_length(head: bytes) -> Optional[int]:
  """The payload length the frame header at the start of `head` claims, when that header
  is whole and its CRC holds; else None."""
  if len(head) < HEADER_SIZE:
    return None
  length, crc = _U64_U32.unpack_from(head)
  return length if masked_crc(head[:8]) == crc else None


_MAGIC = ((b'\x89PNG', 'a PNG image'), (b'\xff\xd8\xff', 'a JPEG image'),
          (b'GIF8', 'a GIF image'), (b'RIFF', 'a RIFF file (WebP, WAV)'),
          (b'II*\x00', 'a TIFF image'), (b'MM\x00*', 'a TIFF image'),
          (b'\x1f\x8b', 'gzip data'), (b'PK\x03\x04', 'a zip archive'),
          (b'%PDF', 'a PDF document'), (b'\x93NUMPY', 'a .npy array'),
          (b'PAR1', 'a Parquet file'), (b'ARROW1', 'an Arrow file'))


def looks_like(head: bytes) -> str:
  """What a file's first bytes look like, in words ('JSON text', 'a PNG image', ...)."""
  for magic, what in _MAGIC:
    if head.startswith(magic):
      return what
  try:
    text = head.decode('utf-8')
  except UnicodeDecodeError:
    # A multi-byte character cut at the end of the head is still text.
    try:
      text = head[:-3].decode('utf-8') if len(head) > 3 else ''
    except UnicodeDecodeError:
      text = ''
  if text and all(c.isprintable() or c in '\t\r\n' for c in text):
    return 'JSON text' if text.lstrip()[:1] in ('{', '[') else 'text'
  return 'binary data'


def plausible_start(head: bytes, max_record_size: int = DEFAULT_MAX_RECORD_SIZE) -> bool:
  """Whether a file whose first bytes are `head` starts like a TFRecord file: empty, an
  intact frame header, or too short for one but with a length's zero high bytes. (A head
  that fails is a damaged TFRecord only if an intact frame follows: `_walk` looks.)"""
  if len(head) >= HEADER_SIZE:
    return frame_length(head) is not None
  return max_record_size >= 1 << 32 or not any(head[4:8])


def not_tfrecord_message(head: bytes) -> str:
  """The message of a `not_tfrecord` failure for a file whose first bytes are `head`."""
  why = (f'its first {HEADER_SIZE} bytes are not a TFRecord frame header and no intact '
         'frame follows' if len(head) >= HEADER_SIZE else
         f'it is {len(head)} bytes long and they cannot begin a TFRecord frame')
  return (f'not a TFRecord file: {why} (it looks like {looks_like(head)}); remove it '
          'from the --input patterns')


def encode_record(payload: bytes) -> bytes:
  """One complete frame holding `payload`."""
  length = _U64.pack(len(payload))
  return b''.join((length, _U32.pack(masked_crc(length)), payload,
                   _U32.pack(masked_crc(payload))))


@dataclasses.dataclass(frozen=True, order=True)
class RecordRef:
  """Where a record came from: file URL, record index in that file, byte offset of its frame.

  For compressed files the offset counts bytes of the decompressed stream.
  """
  path: str
  index: int
  offset: int


Record = Tuple[RecordRef, bytes]


# ---------------------------------------------------------------------------------------
# Compression


def compression_from_name(path: str) -> Optional[str]:
  """'gzip'/'zlib' from a file extension, or None when the name does not say."""
  lowered = path.lower()
  for extension, compression in _EXTENSIONS.items():
    if lowered.endswith(extension):
      return compression
  return None


def sniff_compression(head: bytes) -> str:
  """Decides from a file's first bytes: a valid frame header wins, then gzip, then zlib."""
  if len(head) >= HEADER_SIZE:
    length, crc = _U64_U32.unpack_from(head)
    if masked_crc(head[:8]) == crc:
      return 'none'
  if head[:2] == b'\x1f\x8b':
    return 'gzip'
  if len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0:
    return 'zlib'
  return 'none'


def resolve_compression(path: str, requested: str, head: bytes) -> str:
  if requested not in COMPRESSIONS:
    raise errors.ConfigError(
        f'compression must be one of {", ".join(COMPRESSIONS)}, got {requested!r}')
  if requested != 'auto':
    return requested
  if frame_length(head) is not None:
    return 'none'  # an intact frame header: uncompressed, whatever the name says
  return compression_from_name(path) or sniff_compression(head)


class _Inflater(io.RawIOBase):
  """Decompressed view of a gzip or zlib stream, member after member."""

  def __init__(self, raw: BinaryIO, compression: str):
    super().__init__()
    self._raw = raw
    self._wbits = 31 if compression == 'gzip' else 15
    self._inflater = zlib.decompressobj(self._wbits)
    self._input = b''
    self._output = b''
    self._started = False
    self._produced = False  # any output yet: an error before it means "not compressed"
    self.compression = compression
    self.truncated = False

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    view = memoryview(buffer).cast('B')
    while not self._output:
      if not self._step():
        return 0
    n = min(len(view), len(self._output))
    view[:n] = self._output[:n]
    self._output = self._output[n:]
    return n

  def _step(self) -> bool:
    """Produces more output; False at the end of the stream."""
    if not self._input:
      if self._inflater.eof and self._inflater.unused_data:
        self._input = self._inflater.unused_data
      else:
        self._input = self._raw.read(_SCAN_CHUNK)
      if not self._input:
        if self._started and not self._inflater.eof:
          self.truncated = True
        return False
    if self._inflater.eof:
      if not self._input.strip(b'\x00'):
        self._input = b''  # trailing zero padding after the last member
        return True
      self._inflater = zlib.decompressobj(self._wbits)
    self._started = True
    try:
      self._output = self._inflater.decompress(self._input, _SCAN_CHUNK * 16)
    except zlib.error as e:
      if not self._produced:
        raise errors.CorruptRecordError(
            errors.NOT_TFRECORD,
            f'not {self.compression} data ({e}), which its name, its first bytes or '
            f'--compression said: it looks like {looks_like(self._input[:HEADER_SIZE])}' + (
                '; it is an uncompressed TFRecord file: pass --compression none'
                if frame_length(self._input[:HEADER_SIZE]) is not None else
                '; remove it from the --input patterns'), index=0, offset=0) from e
      raise errors.CorruptRecordError(
          errors.CRC_MISMATCH,
          f'the compressed stream is damaged ({e}); nothing after this point can be '
          'recovered from a compressed file') from e
    self._produced = self._produced or bool(self._output)
    self._input = self._inflater.unconsumed_tail
    if self._inflater.eof:
      self._input = self._inflater.unused_data or self._input
    return True


def open_decompressed(raw: BinaryIO, compression: str) -> BinaryIO:
  """Wraps a raw binary stream so reads return the decompressed TFRecord bytes."""
  if compression == 'none':
    return raw
  if compression not in ('gzip', 'zlib'):
    raise errors.ConfigError(f'unknown compression {compression!r}')
  return io.BufferedReader(_Inflater(raw, compression), buffer_size=1 << 20)


# ---------------------------------------------------------------------------------------
# Random access over a stream


class _Source:
  """Reads bytes at absolute positions: seeks when it can, else keeps a look-back buffer."""

  def __init__(self, stream: BinaryIO, seekable: bool):
    self._stream = stream
    self.seekable = seekable
    self._position = None if seekable else 0
    self._buffer = bytearray()
    self._base = 0  # absolute offset of _buffer[0] (non-seekable streams)

  def read_at(self, position: int, n: int) -> bytes:
    """Up to n bytes at `position`; fewer only at the end of the stream."""
    if self.seekable:
      if position != self._position:
        self._stream.seek(position)
      data = _read_full(self._stream, n)
      self._position = position + len(data)
      return data
    if position < self._base:
      raise AssertionError('look-back buffer released past a position still needed')
    missing = position + n - (self._base + len(self._buffer))
    while missing > 0:
      chunk = self._stream.read(max(missing, _SCAN_CHUNK))
      if not chunk:
        break
      self._buffer += chunk
      missing -= len(chunk)
    start = position - self._base
    return bytes(self._buffer[start:start + n])

  def release(self, position: int) -> None:
    """Bytes before `position` will not be asked for again."""
    if not self.seekable and position > self._base:
      del self._buffer[:position - self._base]
      self._base = position

  def skip_to(self, position: int) -> None:
    """Moves to `position` without holding the bytes before it in memory."""
    if self.seekable:
      return
    self.release(min(position, self._base + len(self._buffer)))
    while self._base < position:
      chunk = self._stream.read(min(position - self._base, 1 << 20))
      if not chunk:
        return
      self._base += len(chunk)


def _read_full(stream: BinaryIO, n: int) -> bytes:
  data = stream.read(n)
  if data is None:
    data = b''
  if len(data) == n or not data:
    return data
  parts = [data]
  got = len(data)
  while got < n:
    more = stream.read(n - got)
    if not more:
      break
    parts.append(more)
    got += len(more)
  return b''.join(parts)


def _find_next_frame(source: _Source, start: int, max_record_size: int) -> Optional[int]:
  """The first position >= start where a whole frame verifies (both CRCs), or None."""
  position = start
  # A length under 4 GiB has four zero high bytes: candidates are found by bytes.find,
  # so scanning text or compressed data (a file that is no TFRecord) takes no CRC a byte.
  high_bytes_zero = max_record_size < 1 << 32
  while True:
    window = source.read_at(position, _SCAN_CHUNK + HEADER_SIZE - 1)
    if len(window) < HEADER_SIZE:
      return None
    last = len(window) - HEADER_SIZE
    i = 0
    while i <= last:
      if high_bytes_zero:
        zeros = window.find(b'\x00\x00\x00\x00', i + 4, last + 8)
        if zeros < 0:
          break
        i = zeros - 4
      length, crc = _U64_U32.unpack_from(window, i)
      if length <= max_record_size and masked_crc(window[i:i + 8]) == crc:
        candidate = position + i
        body = source.read_at(candidate + HEADER_SIZE, length + FOOTER_SIZE)
        if (len(body) == length + FOOTER_SIZE and
            masked_crc(body[:length]) == _U32.unpack_from(body, length)[0]):
          return candidate
      i += 1
    position += last + 1
    source.release(position)


# ---------------------------------------------------------------------------------------
# The walk


def _walk(
    source: _Source,
    path: str,
    *,
    start: int,
    end: Optional[int],
    first_index: int,
    max_record_size: int,
    size: Optional[int],
    read_payload: bool,
) -> Iterator[Union[Tuple[RecordRef, Optional[bytes]], errors.CorruptRecordError]]:
  position = start
  index = first_index

  def damage(reason: str, message: str) -> errors.CorruptRecordError:
    return errors.CorruptRecordError(
        reason, message, path=path, index=index, offset=position)

  # A seekable stream's footer is read with the next frame's header, a call less per
  # record. Not a compressed one's: reading ahead could meet damage (an error) before
  # the record in hand is given out.
  read_ahead = HEADER_SIZE if source.seekable else 0
  ahead = None
  while end is None or position < end:
    header = source.read_at(position, HEADER_SIZE) if ahead is None else ahead
    ahead = None
    if not header:
      if size is not None and position < size:
        yield damage(errors.TRUNCATED, _shrunk_message(position, size))
      return
    if len(header) < HEADER_SIZE:
      if position == 0 and not plausible_start(header, max_record_size):
        yield damage(errors.NOT_TFRECORD, not_tfrecord_message(header))
        return
      yield damage(
          errors.TRUNCATED,
          f'the file ends {len(header)} bytes into a record header; the upload or copy '
          'that made this file was probably cut short')
      return
    length, length_crc = _U64_U32.unpack(header)
    if masked_crc(header[:8]) != length_crc:
      following = _find_next_frame(source, position + 1, max_record_size)
      if position == 0 and following is None:
        # No frame anywhere: not a damaged TFRecord file but another kind of file.
        yield damage(errors.NOT_TFRECORD, not_tfrecord_message(header))
        return
      skipped = 'to the end of the file' if following is None else (
          f'{following - position} bytes up to the next intact record')
      yield damage(
          errors.CRC_MISMATCH,
          f'record header CRC mismatch (the length field is damaged); skipped {skipped}')
      if following is None:
        return
      index += 1
      position = following
      continue
    frame_end = position + FRAME_OVERHEAD + length
    if length > max_record_size:
      if size is not None and frame_end <= size:
        # A real but oversized record: skip it without reading it.
        yield damage(
            errors.RECORD_TOO_LARGE,
            f'record of {length} bytes exceeds the limit of {max_record_size} bytes '
            '(raise --max_record_size to read it)')
        index += 1
        position = frame_end
        source.skip_to(position)
        continue
      following = _find_next_frame(source, position + 1, max_record_size)
      yield damage(
          errors.RECORD_TOO_LARGE,
          f'record header claims {length} bytes, more than the limit of '
          f'{max_record_size} bytes and more than the file holds; nothing was allocated')
      if following is None:
        return
      index += 1
      position = following
      continue
    if not read_payload:
      if size is not None and frame_end > size:
        yield damage(errors.TRUNCATED, _truncated_message(length, size - position - 12))
        return
      yield RecordRef(path, index, position), None
    else:
      payload = source.read_at(position + HEADER_SIZE, length)
      tail = source.read_at(position + HEADER_SIZE + length, FOOTER_SIZE + read_ahead)
      footer, ahead = tail[:FOOTER_SIZE], (tail[FOOTER_SIZE:] if read_ahead else None)
      if len(payload) < length or len(footer) < FOOTER_SIZE:
        yield damage(errors.TRUNCATED, _shrunk_message(position, size) if (
            size is not None and frame_end <= size) else _truncated_message(
                length, len(payload) + len(footer)))
        return
      if masked_crc(payload) != _U32.unpack(footer)[0]:
        yield damage(errors.CRC_MISMATCH,
                     f'payload CRC mismatch in a record of {length} bytes (the record '
                     'data is damaged; the records around it are unaffected)')
      else:
        yield RecordRef(path, index, position), payload
    index += 1
    position = frame_end
    source.release(position)


def _shrunk_message(position: int, size: int) -> str:
  return (f'the file ends before byte {position + HEADER_SIZE} but held {size} bytes when '
          'the run was planned: it was cut or replaced while the run read it; run again '
          'once it is whole')


def _truncated_message(length: int, available: int) -> str:
  return (f'the file ends inside a record: {length} payload bytes claimed, '
          f'{max(available, 0)} present; the file was probably cut short')


def read_records(
    stream: BinaryIO,
    path: str,
    *,
    start: int = 0,
    end: Optional[int] = None,
    first_index: int = 0,
    max_record_size: int = DEFAULT_MAX_RECORD_SIZE,
    size: Optional[int] = None,
    seekable: Optional[bool] = None,
) -> Iterator[Union[Record, errors.CorruptRecordError]]:
  """Yields each slot from frame `start` up to (not including) frame position `end`.

  `stream` holds the (decompressed) TFRecord bytes. `start` must be a frame boundary
  (0, or a range start from `plan_ranges`). Good records come as `(RecordRef, payload)`;
  damage comes as a `CorruptRecordError` value. A damaged compressed stream ends the walk
  with one error, as nothing after it can be recovered.
  """
  if seekable is None:
    seekable = _is_seekable(stream)
  source = _Source(stream, seekable)
  source.skip_to(start)
  walk = _walk(source, path, start=start, end=end, first_index=first_index,
               max_record_size=max_record_size, size=size, read_payload=True)
  last_index, last_offset = first_index, start
  damaged_at_end = False
  inflater = getattr(stream, 'raw', None)
  try:
    for item in walk:
      damaged_at_end = isinstance(item, errors.CorruptRecordError)
      if (damaged_at_end and item.reason == errors.NOT_TFRECORD and
          isinstance(inflater, _Inflater)):
        item.message = item.message.replace(
            'not a TFRecord file:', f'not a TFRecord file once {inflater.compression} '
            'decompressed:', 1)
      if not damaged_at_end:
        last_index, last_offset = item[0].index + 1, item[0].offset
      yield item
  except errors.CorruptRecordError as e:
    yield e.at(path, last_index, last_offset)
    return
  # A compressed stream cut at a frame boundary looks clean to the walk.
  if not damaged_at_end and getattr(getattr(stream, 'raw', None), 'truncated', False):
    yield errors.CorruptRecordError(
        errors.TRUNCATED, 'the compressed stream ends before its end marker; the file '
        'was probably cut short', path=path, index=last_index, offset=last_offset)


def _is_seekable(stream: BinaryIO) -> bool:
  try:
    return bool(stream.seekable())
  except (AttributeError, ValueError):
    return False


@dataclasses.dataclass(frozen=True, order=True)
class FileRange:
  """A run of frames in one file: [start, end) in bytes, first record index, compression.

  `ordinal` of `ranges`: where the range sits among the ranges its file was cut into
  (0 of 1 for a file read whole), so what a range writes can be named from the input
  alone (`shards.shard_name`).
  """
  path: str
  start: int
  end: Optional[int]
  first_index: int
  compression: str
  size: Optional[int] = None
  ordinal: int = 0
  ranges: int = 1


def plan_ranges(
    stream: BinaryIO,
    path: str,
    *,
    size: int,
    split_bytes: int,
    max_record_size: int = DEFAULT_MAX_RECORD_SIZE,
) -> List[FileRange]:
  """Cuts an uncompressed, seekable file into ranges of about `split_bytes`.

  Reads frame headers only. Every range starts on a slot the full walk also visits, so
  reading the ranges one by one yields exactly what one whole-file read yields. The cuts
  depend on the file's bytes and `split_bytes` alone, so a re-run cuts it the same way.
  """
  if size <= split_bytes:
    return [FileRange(path, 0, None, 0, 'none', size)]
  source = _Source(stream, seekable=True)
  walk = _walk(source, path, start=0, end=None, first_index=0,
               max_record_size=max_record_size, size=size, read_payload=False)
  ranges: List[FileRange] = []
  range_start, range_index = 0, 0
  for item in walk:
    if isinstance(item, errors.CorruptRecordError):
      slot_index, slot_offset = item.index, item.offset
    else:
      slot_index, slot_offset = item[0].index, item[0].offset
    if slot_offset - range_start >= split_bytes:
      ranges.append(FileRange(path, range_start, slot_offset, range_index, 'none', size))
      range_start, range_index = slot_offset, slot_index
  ranges.append(FileRange(path, range_start, None, range_index, 'none', size))
  return [dataclasses.replace(r, ordinal=k, ranges=len(ranges))
          for k, r in enumerate(ranges)]


def count_slots(stream: BinaryIO, path: str, *, size: int,
                max_record_size: int = DEFAULT_MAX_RECORD_SIZE) -> int:
  """How many slots (records and damaged stretches) an uncompressed file holds.

  Reads frame headers only, seeking past payloads, like `plan_ranges`.
  """
  walk = _walk(_Source(stream, seekable=True), path, start=0, end=None, first_index=0,
               max_record_size=max_record_size, size=size, read_payload=False)
  return sum(1 for _ in walk)


# ---------------------------------------------------------------------------------------
# Writing


class TFRecordWriter:
  """Writes frames to a binary stream, optionally compressed; readable by TensorFlow."""

  def __init__(self, stream: BinaryIO, compression: str = 'none'):
    if compression not in ('none', 'gzip', 'zlib'):
      raise errors.ConfigError(f'unknown compression {compression!r}')
    self._stream = stream
    self._compressor = None
    if compression == 'gzip':
      self._stream = gzip.GzipFile(fileobj=stream, mode='wb', mtime=0)
    elif compression == 'zlib':
      self._compressor = zlib.compressobj(6, zlib.DEFLATED, 15)

  def write(self, payload: bytes) -> None:
    frame = encode_record(payload)
    if self._compressor is not None:
      frame = self._compressor.compress(frame)
    self._stream.write(frame)

  def close(self) -> None:
    if self._compressor is not None:
      self._stream.write(self._compressor.flush())
    elif isinstance(self._stream, gzip.GzipFile):
      self._stream.close()

  def __enter__(self) -> 'TFRecordWriter':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def write_tfrecord(path: str, payloads, compression: str = 'none') -> None:
  """Writes `payloads` to a local file `path` as a TFRecord file."""
  with open(path, 'wb') as f, TFRecordWriter(f, compression) as writer:
    for payload in payloads:
      writer.write(payload)
