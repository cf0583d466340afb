"""The export DoFn works in chunks of records, one stage at a time over a chunk; the
files, manifest and dead letter must be those of one record at a time."""

import collections
import json
import os
import re

import numpy as np
import pytest
import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs import export_images
from tests import fixtures
from tests import outputs
from transforms import errors
from transforms import export
from transforms import plan as plan_lib
from transforms import ptransforms
from transforms.inputs import tfrecord

RECORDS = 150
# index -> (id, image feature or whole payload); every other record is a good image.
BAD = {
    0: ('garbage', b'\xff' * 12),                    # proto_parse, first of chunk 1
    30: ('dup', None),                               # name_collision with 31
    31: ('dup', None),
    63: ('missing', 'no image'),                     # missing_feature, last of chunk 1
    64: ('_unrecord_x', None),                       # unsafe_name, first of chunk 2
    65: ('blocked', None),                           # write_error
    100: ('toowide', np.zeros((1, 17000, 3), np.uint8)),  # encode_error
    149: ('nan', 'nan'),                             # non_finite, the last record
}


def _payload(index, prefix='r'):
  id_, what = BAD.get(index, (f'{prefix}{index:03d}', None))
  if isinstance(what, bytes):
    return what
  features = {'id': fixtures.bytes_feature(id_.encode())}
  if isinstance(what, np.ndarray):
    image = what
  elif what == 'no image':
    return fixtures.example(features)
  elif what == 'nan':
    image = (fixtures.photo(index, 16, 12) / 255.0).astype(np.float32)
    image[3, 4, 0] = np.nan
  else:
    image = (fixtures.photo(index, 16, 12) / 255.0).astype(np.float32)
  features['image'] = fixtures.bytes_feature(fixtures.serialized_tensor(image))
  return fixtures.example(features)


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  """One file of RECORDS records, and one whose second frame's CRC is broken."""
  root = tmp_path_factory.mktemp('chunks')
  payloads = [_payload(i) for i in range(RECORDS)]
  records = fixtures.write_tfrecord(str(root / 'records.tfrecord'), payloads)
  frames = [tfrecord.encode_record(_payload(i, prefix='f')) for i in (1, 2, 3)]
  damaged = bytearray(b''.join(frames))
  damaged[len(frames[0]) + 40] ^= 0x55
  framing = root / 'framing.tfrecord'
  framing.write_bytes(bytes(damaged))
  return records, str(framing)


def _export(*args):
  """The export in this process (FnApiRunner), so the chunk size can be patched; its
  counters, summed over steps."""
  options = PipelineOptions([*args, '--id_key', 'id', '--name_template', '{id}.{ext}',
                             '--max_failures', '100', '--runner', 'FnApiRunner'])
  plan = plan_lib.plan_export(
      plan_lib.Request.from_options(options.view_as(export_images.ExportOptions)), 0.0)
  pipeline = beam.Pipeline(options=options)
  _ = pipeline | ptransforms.ExportImages(plan.config)
  result = pipeline.run()
  result.wait_until_finish()
  counters = collections.Counter()
  for counter in result.metrics().query(
      MetricsFilter().with_namespace(ptransforms.NAMESPACE))['counters']:
    counters[counter.key.metric.name] += counter.committed
  return counters


def _run(inputs, out, monkeypatch, records):
  monkeypatch.setattr(export, 'CHUNK_RECORDS', records)
  os.makedirs(os.path.join(out, 'blocked.webp'))  # a folder where a file must go
  counters = _export('--input', inputs[0], '--input', inputs[1], '--output', out,
                     '--image_key', 'image', '--format', 'webp', '--max_pixels', '1000000')
  files = {'counters': counters}
  for name in os.listdir(out):
    path = os.path.join(out, name)
    if os.path.isfile(path) and not name.startswith('_report'):
      with open(path, 'rb') as f:
        files[name] = f.read()
  files['manifest'] = outputs.manifest_bytes(out)
  # A write error names the output root and the temp file it renamed.
  files['_dead_letter.jsonl'] = re.sub(
      rb'[0-9a-f]+-[0-9]+\.unrecord-tmp', b'TEMP',
      files['_dead_letter.jsonl'].replace(out.encode(), b'OUT'))
  return files


def test_chunks_end_at_a_record_count_or_after_the_record_that_fills_them():
  corrupt = errors.CorruptRecordError(errors.CRC_MISMATCH, 'bad frame', path='f', index=2,
                                     offset=99)
  slots = [('r0', b'a' * 10), ('r1', b'b' * 10), corrupt, ('r3', b'c' * 25),
           ('r4', b'd'), ('r5', b'e'), ('r6', b'f')]
  sizes = [[len(c) for c in export._chunks(slots, records, size)]
           for records, size in ((3, 1000), (100, 30), (1, 1000), (100, 1000))]
  # corrupt slots count as records but hold no bytes; the 25-byte record overfills.
  assert sizes == [[3, 3, 1], [4, 3], [1] * 7, [7]]
  assert [s for c in export._chunks(slots, 3, 20) for s in c] == slots
  assert list(export._chunks([], 3, 20)) == []


def test_chunked_export_writes_what_one_record_at_a_time_writes(inputs, tmp_path,
                                                                 monkeypatch):
  one = _run(inputs, str(tmp_path / 'one'), monkeypatch, 1)
  chunked = _run(inputs, str(tmp_path / 'chunked'), monkeypatch, 64)  # BAD's edges
  odd = _run(inputs, str(tmp_path / 'odd'), monkeypatch, 7)

  assert chunked == one and odd == one
  images = {n for n in one if n.endswith('.webp')}
  # Every record and framing.tfrecord's 3 frames, less the damaged frame, the 6 records
  # that fail, and one of the two images named dup.
  assert len(images) == RECORDS + 3 - 1 - 6 - 1 and 'dup.webp' in images
  rows = [json.loads(line) for line in one['_dead_letter.jsonl'].splitlines()]
  assert sorted(row['reason'] for row in rows) == sorted([
      'proto_parse', 'name_collision', 'missing_feature', 'unsafe_name', 'write_error',
      'encode_error', 'non_finite', 'crc_mismatch'])
  assert len(one['manifest'].decode().splitlines()) == len(images)
  # The counters are kept once a chunk; they must be what one record at a time counts.
  intact = [_payload(i) for i in range(RECORDS)] + [_payload(i, 'f') for i in (1, 3)]
  counters = one['counters']
  assert counters['records_read'] == len(intact)
  assert counters['bytes_read'] == sum(len(p) for p in intact)
  assert counters['images_decoded'] == len(intact) - 2  # proto_parse, missing_feature
  # Written, less the one the collision check took back; its bytes stay counted.
  assert counters['images_written'] == len(images)
  overwritten = counters['bytes_written'] - sum(len(one[n]) for n in images)
  assert 0 < overwritten < 2 * len(one['dup.webp'])  # the other 16x12 'dup' image


def test_skip_existing_never_hides_an_image_behind_a_name_another_one_took(tmp_path,
                                                                         monkeypatch):
  """Records 0 and 100 get one name: with --skip_existing the second, in a later chunk,
  finds the first one's file; it is a name collision, as it is without the flag."""
  ids = {0: 'same', 100: 'same'}
  payloads = [fixtures.example({
      'id': fixtures.bytes_feature(ids.get(i, f'r{i:03d}').encode()),
      'image': fixtures.bytes_feature(fixtures.serialized_tensor(fixtures.photo(i, 8, 8)))})
      for i in range(RECORDS)]
  records = fixtures.write_tfrecord(str(tmp_path / 'same.tfrecord'), payloads)
  out = tmp_path / 'out'
  monkeypatch.setattr(export, 'CHUNK_RECORDS', 64)  # records 0 and 100 in two chunks
  _export('--input', records, '--output', str(out), '--skip_existing')

  [row] = [json.loads(line) for line in open(out / '_dead_letter.jsonl')]
  assert (row['reason'], row['index']) == ('name_collision', 100)
  report = json.load(open(out / '_report.json'))
  assert (report['written'], report['skipped'], report['failed']) == (RECORDS - 1, 0, 1)
