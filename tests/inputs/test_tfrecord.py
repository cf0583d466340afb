"""TFRecord framing: cross-checked against TensorFlow, and on damaged files."""

import io
import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from tests import fixtures
from transforms import errors
from transforms.inputs import record_ranges
from transforms.inputs import tfrecord

PAYLOADS = [b'', b'a', b'hello world' * 3, bytes(range(256)) * 40, b'\x00' * 70000]


def _read(data: bytes, **kwargs):
  return list(tfrecord.read_records(io.BytesIO(data), 'mem', **kwargs))


def _good(slots):
  return [s[1] for s in slots if not isinstance(s, errors.CorruptRecordError)]


def _bad(slots):
  return [s for s in slots if isinstance(s, errors.CorruptRecordError)]


def _key(slot):
  """A slot as a comparable tuple: where it is, and its payload or what was wrong."""
  if isinstance(slot, errors.CorruptRecordError):
    return ('bad', slot.reason, slot.index, slot.offset)
  return ('good', slot[0].index, slot[0].offset, slot[1])


@pytest.mark.parametrize('compression', ['', 'GZIP', 'ZLIB'])
def test_reads_files_tensorflow_wrote(tmp_path, compression):
  path = fixtures.write_tfrecord(str(tmp_path / 'tf.tfrecord'), PAYLOADS, compression)
  slots = list(record_ranges.read_all([path]))
  assert _good(slots) == PAYLOADS
  assert [s[0].index for s in slots] == list(range(len(PAYLOADS)))


@pytest.mark.parametrize('compression,tf_name', [('none', ''), ('gzip', 'GZIP'),
                                                  ('zlib', 'ZLIB')])
def test_tensorflow_reads_files_unrecord_wrote(tmp_path, compression, tf_name):
  path = str(tmp_path / 'ours.tfrecord')
  tfrecord.write_tfrecord(path, PAYLOADS, compression)
  assert fixtures.read_with_tf(path, tf_name) == PAYLOADS


def test_plain_frames_are_byte_identical_to_tensorflow(tmp_path):
  ours = str(tmp_path / 'ours.tfrecord')
  tfrecord.write_tfrecord(ours, PAYLOADS)
  theirs = fixtures.write_tfrecord(str(tmp_path / 'tf.tfrecord'), PAYLOADS)
  assert open(ours, 'rb').read() == open(theirs, 'rb').read()


@pytest.mark.parametrize('name,content,expected', [
    ('a.tfrecord.gz', None, 'gzip'), ('a.GZIP', None, 'gzip'), ('a.zz', None, 'zlib'),
    ('a.zlib', None, 'zlib'), ('noext', 'gzip', 'gzip'), ('noext', 'zlib', 'zlib'),
    ('noext', 'none', 'none'),
])
def test_compression_is_detected_by_extension_or_content(tmp_path, name, content,
                                                         expected):
  path = str(tmp_path / name)
  tfrecord.write_tfrecord(path, [b'x' * 10, b'y'], content or expected)
  head = open(path, 'rb').read(12)
  assert tfrecord.resolve_compression(path, 'auto', head) == expected
  assert _good(record_ranges.read_all([path])) == [b'x' * 10, b'y']


def test_compression_option_overrides_the_extension(tmp_path):
  path = str(tmp_path / 'misnamed.gz')
  tfrecord.write_tfrecord(path, [b'plain'], 'none')
  config = record_ranges.ReadConfig(compression='none')
  assert _good(record_ranges.read_all([path], config)) == [b'plain']


def _frames(payloads):
  return b''.join(tfrecord.encode_record(p) for p in payloads)


def test_payload_damage_costs_one_record():
  payloads = [b'first', b'second record', b'third']
  data = bytearray(_frames(payloads))
  data[len(tfrecord.encode_record(b'first')) + 14] ^= 0xFF
  slots = _read(bytes(data))
  assert _good(slots) == [b'first', b'third']
  (bad,) = _bad(slots)
  assert (bad.reason, bad.index, bad.offset) == ('crc_mismatch', 1, 21)
  assert 'payload CRC' in bad.message and bad.path == 'mem'


def test_header_damage_resyncs_to_the_next_intact_record():
  payloads = [b'A' * 30, b'B' * 40, b'C' * 50, b'D' * 60]
  data = bytearray(_frames(payloads))
  data[46 + 3] ^= 0x01  # length field of record 1 (record 0 is 16 + 30 = 46 bytes)
  slots = _read(bytes(data))
  assert _good(slots) == [b'A' * 30, b'C' * 50, b'D' * 60]
  (bad,) = _bad(slots)
  assert (bad.reason, bad.index, bad.offset) == ('crc_mismatch', 1, 46)
  assert [s[0].index for s in slots if not isinstance(s, Exception)] == [0, 2, 3]


def test_truncation_reports_the_cut_record_and_keeps_the_rest():
  payloads = [b'one', b'two', b'three']
  data = _frames(payloads)
  slots = _read(data[:-5])
  assert _good(slots) == [b'one', b'two']
  (bad,) = _bad(slots)
  assert bad.reason == 'truncated' and bad.index == 2
  slots = _read(data[:len(tfrecord.encode_record(b'one')) + 5])
  assert _good(slots) == [b'one'] and _bad(slots)[0].reason == 'truncated'


def test_absurd_length_with_valid_crc_is_rejected_without_allocating():
  length = struct.pack('<Q', 1 << 36)
  bomb = length + struct.pack('<I', tfrecord.masked_crc(length)) + b'x' * 32
  data = tfrecord.encode_record(b'before') + bomb + tfrecord.encode_record(b'after')
  slots = _read(data)
  assert _good(slots) == [b'before', b'after']
  (bad,) = _bad(slots)
  assert bad.reason == 'record_too_large' and '68719476736' in bad.message


def test_oversized_real_record_is_skipped_when_the_file_holds_it():
  data = _frames([b'a', b'b' * 100, b'c'])
  slots = _read(data, max_record_size=50, size=len(data))
  assert _good(slots) == [b'a', b'c']
  assert _bad(slots)[0].reason == 'record_too_large'


@pytest.mark.parametrize('compression', ['gzip', 'zlib'])
def test_truncated_compressed_file_reports_truncation(tmp_path, compression):
  path = str(tmp_path / 'cut.tfrecord')
  tfrecord.write_tfrecord(path, [os.urandom(3000) for _ in range(5)], compression)
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[:len(data) * 2 // 3])
  config = record_ranges.ReadConfig(compression=compression)
  slots = list(record_ranges.read_all([path], config))
  assert 1 <= len(_good(slots)) < 5
  assert [b.reason for b in _bad(slots)] == ['truncated']


def test_ranges_read_exactly_what_one_whole_read_reads(tmp_path):
  payloads = [os.urandom(100 + 37 * i) for i in range(60)]
  data = bytearray(_frames(payloads))
  data[2000] ^= 0x10  # damage somewhere in the middle
  data[5003] ^= 0x10
  path = str(tmp_path / 'big.tfrecord')
  open(path, 'wb').write(bytes(data))
  whole = _read(bytes(data), size=len(data))
  with open(path, 'rb') as f:
    ranges = tfrecord.plan_ranges(f, path, size=len(data), split_bytes=1000)
  assert len(ranges) > 5
  assert ranges[0].start == 0 and ranges[-1].end is None
  # Each range knows its place among its file's, which names what it writes (--pack).
  assert [(r.ordinal, r.ranges) for r in ranges] == [(k, len(ranges))
                                                     for k in range(len(ranges))]
  with open(path, 'rb') as f:  # the same cuts again: a re-run's names are the same
    assert tfrecord.plan_ranges(f, path, size=len(data), split_bytes=1000) == ranges
    whole_file, = tfrecord.plan_ranges(f, path, size=len(data), split_bytes=len(data))
  assert (whole_file.start, whole_file.end, whole_file.ordinal, whole_file.ranges) == (
      0, None, 0, 1)
  pieces = []
  config = record_ranges.ReadConfig(split_bytes=1000)
  for file_range in ranges:
    pieces += list(record_ranges.read_range(file_range, config))
  assert [_key(s) for s in pieces] == [_key(s) for s in whole]
  assert len(_bad(whole)) == 2


def test_a_file_grown_at_its_end_is_cut_where_it_was(tmp_path):
  """What keeps a growing file's earlier shards (`--pack`): its earlier ranges are the
  same ranges, and only its last one reaches further."""
  payloads = [os.urandom(100 + 37 * (i % 9)) for i in range(90)]
  path = str(tmp_path / 'growing.tfrecord')

  def plan(count):
    data = _frames(payloads[:count])
    open(path, 'wb').write(data)
    with open(path, 'rb') as f:
      return tfrecord.plan_ranges(f, path, size=len(data), split_bytes=1000)
  before, after = plan(60), plan(90)
  assert len(after) > len(before) > 3
  def cut(r):
    return r.start, r.end, r.first_index, r.ordinal
  last = len(before) - 1
  assert [cut(r) for r in after[:last]] == [cut(r) for r in before[:last]]
  assert cut(after[last])[::2] == cut(before[last])[::2]  # from the same record on


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_give_records_or_typed_errors(data):
  for slot in _read(data):
    assert isinstance(slot, (tuple, errors.CorruptRecordError))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_files_never_raise_and_keep_undamaged_records(data):
  payloads = [bytes([i]) * (5 + 3 * i) for i in range(6)]
  original = _frames(payloads)
  mutated = bytearray(original)
  position = data.draw(st.integers(0, len(original) - 1))
  mutated[position] ^= data.draw(st.integers(1, 255))
  slots = _read(bytes(mutated), size=len(mutated))
  good = _good(slots)
  # Exactly one record is damaged by one changed byte; every other one survives.
  assert len(good) == 5 and len(_bad(slots)) == 1
  assert all(p in payloads for p in good)


def test_fsspec_urls_globs_and_directories_read_the_same(tmp_path):
  import fsspec
  payloads = [b'one', b'two']
  memory = fsspec.filesystem('memory')
  with memory.open('/unrecord-test/a.tfrecord', 'wb') as f:
    f.write(b''.join(tfrecord.encode_record(p) for p in payloads))
  folder = tmp_path / 'dir'
  folder.mkdir()
  tfrecord.write_tfrecord(str(folder / 'a.tfrecord'), payloads)
  (folder / 'notes.txt').write_text('not a shard')
  for pattern in ('memory://unrecord-test/a.tfrecord', 'memory://unrecord-test/*.tfrecord',
                  str(folder), str(folder / '*.tfrecord'), f'file://{folder}/a.tfrecord'):
    assert _good(record_ranges.read_all([pattern])) == payloads, pattern
  memory.rm('/unrecord-test', recursive=True)


@pytest.mark.parametrize('sizes', [
    [70000, 120, 90000, 64 << 10, 5, 200000, 300],  # a large first record: unbuffered
    [120, 70000, 90000, 5, 200000, 64 << 10],  # a small first record: the buffer
    [(64 << 10) - 1] * 4 + [70000] * 4,  # just under the buffer, then over it
], ids=['large-first', 'small-first', 'at-the-buffer'])
def test_the_index_pass_plans_and_counts_any_record_sizes_as_a_whole_read(
    tmp_path, monkeypatch, sizes):
  payloads = [os.urandom(size) for size in sizes * 3]
  data = bytearray(_frames(payloads))
  data[len(data) // 2] ^= 0x10  # damage inside some record
  data[len(data) - 100] ^= 0x10
  path = str(tmp_path / 'big.tfrecord')
  open(path, 'wb').write(bytes(data))
  buffers = []
  opened = record_ranges.input_files.open_input

  def spy(url, storage_options=None, **kwargs):
    buffers.append(kwargs.get('local_buffer', record_ranges.input_files.LOCAL_BUFFER))
    return opened(url, storage_options, **kwargs)

  monkeypatch.setattr(record_ranges.input_files, 'open_input', spy)
  config = record_ranges.ReadConfig(split_bytes=150000)
  item = record_ranges.input_files.InputFile(path, len(data))
  ranges = record_ranges.plan_file(item, config)
  slots = record_ranges.count_records(item, config)
  # Each pass sniffs the head through the buffer; a large first record opens the file
  # again, unbuffered, for the headers.
  per_pass = [64 << 10, 0] if sizes[0] >= 64 << 10 else [64 << 10]
  assert buffers == per_pass * 2
  with open(path, 'rb') as f:  # through the 64 KiB buffer, as before
    assert ranges == tfrecord.plan_ranges(f, path, size=len(data), split_bytes=150000)
  whole = _read(bytes(data), size=len(data))
  pieces = [slot for file_range in ranges for slot in record_ranges.read_range(file_range, config)]
  assert len(ranges) > 3 and slots == len(whole)
  assert [_key(s) for s in pieces] == [_key(s) for s in whole]
  assert len(_bad(whole)) == 2 and len(_good(whole)) == len(payloads) - 2
