"""Reading TFRecords from any storage: files into record ranges, ranges into records.

Beam-free: the transforms in `ptransforms` (PlanRanges, ReadImageRecords, the export)
call these, as does the launcher's sampling. Over the pure modules `tfrecord` (framing)
and `storage` (fsspec).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import BinaryIO, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from transforms import errors
from transforms import input_files
from transforms import progress
from transforms import tfrecord
from transforms.tfrecord import FileRange

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
  """Ranges to read one file in: several for a large uncompressed file, else one.

  A file that cannot be opened now (deleted or made unreadable since the launch) is
  planned as one range, which `read_range` reports as a `read_error`.
  """
  try:
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
