"""Reading TFRecords from any storage: files into record ranges, ranges into records.

Beam-free: the transforms in `ptransforms` (PlanRanges, ReadImageRecords, the export)
call these, as does the launcher's sampling. Over the pure modules `tfrecord` (framing)
and `input_files` (fsspec).
"""

from __future__ import annotations

import contextlib
import dataclasses
import zlib
from typing import BinaryIO, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from transforms import errors
from transforms import progress
from transforms.inputs import input_files
from transforms.inputs import tfrecord
from transforms.inputs.tfrecord import FileRange

DEFAULT_SPLIT_BYTES = 64 << 20
_SNIFF_BYTES = tfrecord.HEADER_SIZE


@dataclasses.dataclass(frozen=True)
class ReadConfig:
  """How input files are found and framed. Validated here; no I/O until the run."""
  compression: str = 'auto'
  max_record_size: int = tfrecord.DEFAULT_MAX_RECORD_SIZE
  split_bytes: int = DEFAULT_SPLIT_BYTES
  storage_options: Optional[input_files.StorageOptions] = None

  def __post_init__(self):
    if self.compression not in tfrecord.COMPRESSIONS:
      raise errors.ConfigError(
          f'compression must be one of {", ".join(tfrecord.COMPRESSIONS)}, got '
          f'{self.compression!r}')
    if self.max_record_size <= 0 or self.split_bytes <= 0:
      raise errors.ConfigError('max_record_size and split_bytes must be positive')


def plan_file(item: input_files.InputFile, config: ReadConfig) -> List[FileRange]:
  """Ranges to read one file in: several for a large uncompressed file, else one; none
  for a file found in a folder that holds no TFRecord (`not_tfrecord`).

  A file that cannot be opened now (deleted or made unreadable since the launch) is
  planned as one range, which `read_range` reports as a `read_error`.
  """
  try:
    if item.in_folder and not_tfrecord(item, config) is not None:
      return []
    return _plan_file(item, config)
  except OSError:
    compression = tfrecord.resolve_compression(item.url, config.compression, b'')
    return [FileRange(item.url, 0, None, 0, compression, item.size)]


def _plan_file(item: input_files.InputFile, config: ReadConfig) -> List[FileRange]:
  with _header_stream(item.url, config) as (stream, head):
    compression = tfrecord.resolve_compression(item.url, config.compression, head)
    if compression != 'none':
      return [FileRange(item.url, 0, None, 0, compression, item.size)]
    return tfrecord.plan_ranges(stream, item.url, size=item.size,
                                split_bytes=config.split_bytes,
                                max_record_size=config.max_record_size)


_HEAD_BYTES = 4096  # enough to inflate a compressed file's first frame header


def not_tfrecord(item: input_files.InputFile, config: ReadConfig,
                 head: Optional[bytes] = None) -> Optional[str]:
  """Why `item` holds no TFRecord (the message of its `not_tfrecord` slot), else None:
  a TFRecord file (a damaged one too), an empty one, or one that cannot be read now (its
  read says so). `head`: its first bytes, when already fetched.

  The framing walk decides (`tfrecord`): its first frame header fails and no intact
  frame follows. Most files are settled by their first bytes alone.
  """
  if head is not None and _head_is_tfrecord(item.url, head, config):
    return None
  try:
    with input_files.open_input(item.url, config.storage_options) as raw:
      first = raw.read(tfrecord.HEADER_SIZE)
      compression = tfrecord.resolve_compression(item.url, config.compression, first)
      if compression == 'none' and tfrecord.plausible_start(first, config.max_record_size):
        return None
      raw.seek(0)
      compressed = compression != 'none'
      stream = tfrecord.open_decompressed(raw, compression)
      for slot in tfrecord.read_records(
          stream, item.url, max_record_size=config.max_record_size,
          size=None if compressed else item.size, seekable=not compressed):
        if (isinstance(slot, errors.CorruptRecordError) and
            slot.reason == errors.NOT_TFRECORD):
          return slot.message
        return None
  except OSError:
    return None
  return None


def _head_is_tfrecord(url: str, head: bytes, config: ReadConfig) -> bool:
  """True when a file's first bytes show a TFRecord stream (or too few to tell)."""
  compression = tfrecord.resolve_compression(url, config.compression,
                                             head[:tfrecord.HEADER_SIZE])
  data = head
  if compression != 'none':
    try:
      data = zlib.decompressobj(31 if compression == 'gzip' else 15).decompress(
          head, tfrecord.HEADER_SIZE)
    except zlib.error:
      return False
  return tfrecord.plausible_start(data[:tfrecord.HEADER_SIZE], config.max_record_size)


def list_inputs(patterns: Sequence[str], config: ReadConfig
                ) -> Tuple[List[input_files.InputFile], List[Tuple[str, str]]]:
  """The files the patterns name that are read, and those skipped: files found in a
  folder that hold no TFRecord, as (url, why). A file named outright is always read
  (then one `not_tfrecord` failure, if it is none)."""
  files = input_files.expand_patterns(patterns, config.storage_options)
  listed = [item for item in files if item.in_folder]
  heads = input_files.read_heads([item.url for item in listed], _HEAD_BYTES,
                                 config.storage_options)
  skipped = {}
  for item, head in zip(listed, heads):
    problem = not_tfrecord(item, config, head if head is not None else None)
    if problem is not None:
      skipped[item.url] = problem
  return ([item for item in files if item.url not in skipped],
          sorted(skipped.items()))


@contextlib.contextmanager
def _header_stream(url: str, config: ReadConfig
                   ) -> Iterator[Tuple[BinaryIO, bytes]]:
  """The file opened for a pass over its frame headers, and its first bytes.

  The pass seeks past every payload to read the next 12-byte header. Through the local
  64 KiB buffer, each header of a record larger than that brings 64 KiB it throws away
  (half the time of planning 600 KB records, docs/benchmarks.md), so a local file whose
  first record is that large is opened again unbuffered. Any other file keeps the stream
  its first bytes came from: smaller records' next headers are in the buffer, and other
  filesystems read ahead by blocks.
  """
  with input_files.open_input(url, config.storage_options) as stream:
    head = stream.read(_SNIFF_BYTES)
    first_length = tfrecord.frame_length(head)
    if (first_length is None or first_length < input_files.LOCAL_BUFFER or
        not input_files.is_local(input_files.filesystem(url, config.storage_options)[0])):
      yield stream, head
      return
  with input_files.open_input(url, config.storage_options, local_buffer=0) as stream:
    yield stream, head


def read_range(file_range: FileRange, config: ReadConfig
               ) -> Iterator[Union[tfrecord.Record, errors.CorruptRecordError]]:
  """Every slot of one range: `(RecordRef, payload)` or a CorruptRecordError value.

  An input that cannot be read (deleted, unreadable, its store gone) ends the range with
  one `read_error` at the first record not read: bad input, not a reason to stop the job.
  """
  index, offset = file_range.first_index, file_range.start
  try:
    for slot in _read_range(file_range, config):
      if not isinstance(slot, errors.CorruptRecordError):
        index, offset = slot[0].index + 1, None
      yield slot
  except Exception as e:  # pylint: disable=broad-except  (any filesystem's own errors)
    if isinstance(e, errors.UnrecordError):
      raise
    yield errors.CorruptRecordError(
        errors.READ_ERROR,
        f'the input cannot be read ({type(e).__name__}: {e}); its records from here on '
        'were not read: check that the file exists and is readable, then run again',
        path=file_range.path, index=index, offset=offset)


def _read_range(file_range: FileRange, config: ReadConfig
                ) -> Iterator[Union[tfrecord.Record, errors.CorruptRecordError]]:
  with input_files.open_input(file_range.path, config.storage_options) as raw:
    compressed = file_range.compression != 'none'
    stream = tfrecord.open_decompressed(raw, file_range.compression)
    yield from tfrecord.read_records(
        stream, file_range.path, start=file_range.start, end=file_range.end,
        first_index=file_range.first_index, max_record_size=config.max_record_size,
        size=None if compressed else file_range.size, seekable=not compressed)


def count_records(item: input_files.InputFile, config: ReadConfig) -> Optional[int]:
  """Exact record count of a local uncompressed file (headers only), else None."""
  fs, _ = input_files.filesystem(item.url, config.storage_options)
  if not input_files.is_local(fs):
    return None
  if item.in_folder and not_tfrecord(item, config) is not None:
    return 0  # skipped (plan_file)
  with _header_stream(item.url, config) as (stream, head):
    if tfrecord.resolve_compression(item.url, config.compression, head) != 'none':
      return None
    return tfrecord.count_slots(stream, item.url, size=item.size,
                                max_record_size=config.max_record_size)


def fetch_record(path: str, offset: int, config: ReadConfig) -> Optional[bytes]:
  """The payload of the intact record whose frame starts at `offset`, else None."""
  try:
    with input_files.open_input(path, config.storage_options) as probe:
      compression = tfrecord.resolve_compression(path, config.compression,
                                                 probe.read(_SNIFF_BYTES))
  except OSError:
    return None  # gone since it was read: the dead-letter row says `replayable: false`
  file_range = FileRange(path, offset, offset + 1, 0, compression)
  for slot in read_range(file_range, config):
    return None if isinstance(slot, errors.CorruptRecordError) else slot[1]
  return None


def read_all(patterns: Sequence[str], config: ReadConfig = ReadConfig()
             ) -> Iterator[Union[tfrecord.Record, errors.CorruptRecordError]]:
  """Every slot of every file the patterns name, in order; the non-Beam path."""
  for item in input_files.expand_patterns(patterns, config.storage_options):
    for file_range in plan_file(item, config):
      yield from read_range(file_range, config)


def read_slots(slots: Iterable[Union[tfrecord.Record, errors.CorruptRecordError]],
               tally: progress.Tally) -> Iterator[Union[tfrecord.Record, errors.Failure]]:
  """`read_range`'s slots as records, and framing damage as dead-letter rows (stage
  `read`); counts `records_read` and `bytes_read`."""
  records = size = 0
  try:
    for slot in slots:
      if isinstance(slot, errors.CorruptRecordError):
        yield tally.fail(slot, 'read')
      else:
        records += 1
        size += len(slot[1])
        yield slot
  finally:  # counted once, not per record
    tally.add('records_read', records)
    tally.add('bytes_read', size)
