"""Beam transforms that read TFRecords of images: ReadImageRecords and DecodeImages.

Thin wiring over the pure modules `tfrecord`, `storage` and `decode`. Both transforms
return a DoOutputsTuple: the main output, and `dead_letter` carrying `errors.Failure` rows.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, List, Optional, Sequence, Union

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms import decode
from transforms import errors
from transforms import isolation
from transforms import progress as progress_lib
from transforms import record_layout
from transforms import storage
from transforms import tfrecord
from transforms.tfrecord import FileRange

METRICS_NAMESPACE = 'unrecord'
DEAD_LETTER = 'dead_letter'
DEFAULT_SPLIT_BYTES = 64 << 20
_SNIFF_BYTES = tfrecord.HEADER_SIZE


@dataclasses.dataclass(frozen=True)
class ReadConfig:
  """How input files are found and framed. Validated here; no I/O until the run."""
  compression: str = 'auto'
  max_record_size: int = tfrecord.DEFAULT_MAX_RECORD_SIZE
  split_bytes: int = DEFAULT_SPLIT_BYTES
  storage_options: Optional[storage.StorageOptions] = None

  def __post_init__(self):
    if self.compression not in tfrecord.COMPRESSIONS:
      raise errors.ConfigError(
          f'compression must be one of {", ".join(tfrecord.COMPRESSIONS)}, got '
          f'{self.compression!r}')
    if self.max_record_size <= 0 or self.split_bytes <= 0:
      raise errors.ConfigError('max_record_size and split_bytes must be positive')


def plan_file(item: storage.InputFile, config: ReadConfig) -> List[FileRange]:
  """Ranges to read one file in: several for a large uncompressed file, else one.

  A file that cannot be opened now (deleted or made unreadable since the launch) is
  planned as one range, which `read_range` reports as a `read_error`.
  """
  try:
    return _plan_file(item, config)
  except OSError:
    compression = tfrecord.resolve_compression(item.url, config.compression, b'')
    return [FileRange(item.url, 0, None, 0, compression, item.size)]


def _plan_file(item: storage.InputFile, config: ReadConfig) -> List[FileRange]:
  with storage.open_input(item.url, config.storage_options) as stream:
    head = stream.read(_SNIFF_BYTES)
    compression = tfrecord.resolve_compression(item.url, config.compression, head)
    if compression != 'none':
      return [FileRange(item.url, 0, None, 0, compression, item.size)]
    return tfrecord.plan_ranges(stream, item.url, size=item.size,
                                split_bytes=config.split_bytes,
                                max_record_size=config.max_record_size)


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
  with storage.open_input(file_range.path, config.storage_options) as raw:
    compressed = file_range.compression != 'none'
    stream = tfrecord.open_decompressed(raw, file_range.compression)
    yield from tfrecord.read_records(
        stream, file_range.path, start=file_range.start, end=file_range.end,
        first_index=file_range.first_index, max_record_size=config.max_record_size,
        size=None if compressed else file_range.size, seekable=not compressed)


def count_records(item: storage.InputFile, config: ReadConfig) -> Optional[int]:
  """Exact record count of a local uncompressed file (headers only), else None."""
  fs, _ = storage.filesystem(item.url, config.storage_options)
  if not storage.is_local(fs):
    return None
  with storage.open_input(item.url, config.storage_options) as stream:
    head = stream.read(_SNIFF_BYTES)
    if tfrecord.resolve_compression(item.url, config.compression, head) != 'none':
      return None
    return tfrecord.count_slots(stream, item.url, size=item.size,
                                max_record_size=config.max_record_size)


def fetch_record(path: str, offset: int, config: ReadConfig) -> Optional[bytes]:
  """The payload of the intact record whose frame starts at `offset`, else None."""
  try:
    with storage.open_input(path, config.storage_options) as probe:
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
  for item in storage.expand_patterns(patterns, config.storage_options):
    for file_range in plan_file(item, config):
      yield from read_range(file_range, config)


class _ReadRangeFn(beam.DoFn):
  """FileRange -> (RecordRef, bytes); framing damage goes to the dead letter."""

  def __init__(self, config: ReadConfig, progress: Optional[progress_lib.Address] = None):
    self._config = config
    self._progress_address = progress
    self._records = Metrics.counter(METRICS_NAMESPACE, 'records_read')
    self._bytes = Metrics.counter(METRICS_NAMESPACE, 'bytes_read')

  def setup(self):
    self._progress = progress_lib.ProgressSender(self._progress_address)

  def finish_bundle(self):
    self._progress.flush()

  def teardown(self):
    self._progress.close()

  def process(self, file_range: FileRange):
    for item in read_range(file_range, self._config):
      if isinstance(item, errors.CorruptRecordError):
        self._progress.count('failed')
        Metrics.counter(METRICS_NAMESPACE, f'failed_{item.reason}').inc()
        yield beam.pvalue.TaggedOutput(DEAD_LETTER,
                                       errors.Failure.from_error(item, stage='read'))
      else:
        self._records.inc()
        self._bytes.inc(len(item[1]))
        yield item


class PlanRanges(beam.PTransform):
  """Input patterns -> FileRange, spread over workers so the runner can balance them.

  Large uncompressed files are cut into record ranges by a header-only index pass, so one
  big file spreads over all workers.
  """

  def __init__(self, patterns: Sequence[str], config: ReadConfig = ReadConfig()):
    super().__init__()
    self._patterns = tuple(storage.split_patterns(patterns))
    if not self._patterns:
      raise errors.ConfigError('reading records needs at least one input pattern')
    self._config = config

  def expand(self, pbegin):
    files = (
        pbegin
        | 'Patterns' >> beam.Create([self._patterns])
        | 'ExpandPatterns' >> beam.FlatMap(storage.expand_patterns,
                                           self._config.storage_options))
    # InputFile
    ranges = (
        files
        | 'DistributeFiles' >> beam.Reshuffle()
        | 'PlanRanges' >> beam.FlatMap(plan_file, self._config))
    # FileRange
    return ranges | 'DistributeRanges' >> beam.Reshuffle()


class ReadImageRecords(beam.PTransform):
  """Input patterns -> `(RecordRef, bytes)` records, read range by range (PlanRanges).

  Outputs: `records` and `dead_letter` (Failure).
  """

  def __init__(self, patterns: Sequence[str], config: ReadConfig = ReadConfig(),
               progress: Optional[progress_lib.Address] = None):
    super().__init__()
    self._plan = PlanRanges(patterns, config)
    self._config = config
    self._progress = progress

  def expand(self, pbegin):
    return (
        pbegin
        | 'PlanRanges' >> self._plan
        | 'ReadRanges' >> beam.ParDo(_ReadRangeFn(self._config, self._progress)).with_outputs(
            DEAD_LETTER, main='records'))


def make_decoder(spec: decode.ImageSpec):
  """The encoded-image decoder for `spec`: isolated in a child process, or direct.

  Either way it is called like image_formats.decode_encoded and released with close().
  """
  if spec.isolate_decoder:
    return isolation.IsolatedCall(spec.decoder)
  return isolation.DirectCall(spec.decoder)


class _DecodeFn(beam.DoFn):
  """(RecordRef, bytes) -> DecodedImage per image; undecodable records go to the dead letter."""

  def __init__(self, spec: decode.ImageSpec,
               progress: Optional[progress_lib.Address] = None):
    self._spec = spec
    self._progress_address = progress
    self._images = Metrics.counter(METRICS_NAMESPACE, 'images_decoded')

  def setup(self):
    self._decoder = make_decoder(self._spec)
    self._records = record_layout.LayoutDecoder(self._spec, self._decoder)
    self._progress = progress_lib.ProgressSender(self._progress_address)

  def finish_bundle(self):
    self._progress.flush()

  def teardown(self):
    self._progress.close()
    self._decoder.close()

  def process(self, record: tfrecord.Record):
    ref, payload = record
    try:
      images = self._records.decode(ref, payload)
    except errors.UnrecordError as e:
      self._progress.count('failed')
      Metrics.counter(METRICS_NAMESPACE, f'failed_{e.reason}').inc()
      yield beam.pvalue.TaggedOutput(
          DEAD_LETTER, errors.Failure.from_error(e, stage='decode', payload=payload))
      return
    self._images.inc(len(images))
    yield from images


class DecodeImages(beam.PTransform):
  """`(RecordRef, bytes)` -> DecodedImage (one per image; batches are split).

  Outputs: `images` and `dead_letter` (Failure rows with the record's original bytes).
  """

  def __init__(self, spec: decode.ImageSpec = decode.ImageSpec(),
               progress: Optional[progress_lib.Address] = None):
    super().__init__()
    self._spec = spec
    self._progress = progress

  def expand(self, records):
    return records | 'Decode' >> beam.ParDo(_DecodeFn(self._spec, self._progress)).with_outputs(
        DEAD_LETTER, main='images')

