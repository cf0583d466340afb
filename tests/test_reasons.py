"""Every reason code, provoked by real bad input, in one run: rows, counters, accounting."""

import collections
import json
import os
import struct
import zlib

import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
import apache_beam as beam

from beam_jobs import export_images
from tests import fixtures
from tests import outputs
from transforms import errors
from transforms import plan as plan_lib
from transforms import ptransforms
from transforms.inputs import tfrecord
from transforms.records import protos


def _tensor(array):
  return fixtures.bytes_feature(fixtures.serialized_tensor(array))


def _record(image_feature, id_):
  features = {'id': fixtures.bytes_feature(id_.encode())}
  if image_feature is not None:
    features['image'] = image_feature
  return fixtures.example(features)


def _png_bomb():
  ihdr = struct.pack('>IIBBBBB', 65535, 65535, 8, 2, 0, 0, 0)
  chunk = b'IHDR' + ihdr
  return (b'\x89PNG\r\n\x1a\n' + struct.pack('>I', len(ihdr)) + chunk +
          struct.pack('>I', zlib.crc32(chunk)) + b'\x00' * 64)


def _shape_mismatch_tensor():
  tensor = protos.TensorProto(dtype=4, tensor_content=b'\x00' * 10)
  for size in (4, 4, 3):
    tensor.tensor_shape.dim.add(size=size)
  return fixtures.bytes_feature(tensor.SerializeToString())


def _nan_image():
  image = (fixtures.photo(1, 16, 16) / 255.0).astype(np.float32)
  image[2, 2, 1] = np.nan
  return image


# (id, image feature or raw payload, expected outcome). The run writes WebP with
# --name_template {id}.{ext} and --max_pixels 1000000.
CASES = [
    ('good0', _tensor(fixtures.photo(0, 16, 16)), 'written'),
    ('nan', _tensor(_nan_image()), 'non_finite'),
    ('missing', None, 'missing_feature'),
    ('garbage', b'\xff' * 12, 'proto_parse'),
    ('strings', _tensor(np.array([[b'a', b'b']])), 'unsupported_dtype'),
    ('badshape', _shape_mismatch_tensor(), 'shape_mismatch'),
    ('badjpeg', fixtures.bytes_feature(fixtures.encode_jpeg(fixtures.photo(2))[:-300]),
     'decode_error'),
    ('toowide', _tensor(np.zeros((1, 17000, 3), np.uint8)), 'encode_error'),
    ('blocked', _tensor(fixtures.photo(3, 16, 16)), 'write_error'),
    ('_unrecord_x', _tensor(fixtures.photo(4, 16, 16)), 'unsafe_name'),
    ('dup', _tensor(fixtures.photo(5, 16, 16)), 'dup'),
    ('dup', _tensor(fixtures.photo(6, 16, 16)), 'dup'),
    ('bomb', fixtures.bytes_feature(_png_bomb()), 'too_many_pixels'),
    ('good1', _tensor(fixtures.photo(7, 16, 16)), 'written'),
]


@pytest.fixture
def bad_inputs(tmp_path):
  """Two files: every decode/write-stage reason, and every framing reason."""
  cases = tmp_path / 'cases.tfrecord'
  fixtures.write_tfrecord(str(cases), [
      feature if isinstance(feature, bytes) else _record(feature, id_)
      for id_, feature, _ in CASES])
  frames = [tfrecord.encode_record(_record(_tensor(fixtures.photo(10 + i, 16, 16)),
                                           f'frame{i}')) for i in range(3)]
  damaged = bytearray(frames[0] + frames[1])
  damaged[len(frames[0]) + 40] ^= 0x55  # crc_mismatch in frame1
  length = struct.pack('<Q', 1 << 36)
  damaged += length + struct.pack('<I', tfrecord.masked_crc(length)) + b'\x00' * 8
  damaged += frames[2] + frames[0][:30]  # record_too_large, frame2, then truncated
  framing = tmp_path / 'framing.tfrecord'
  framing.write_bytes(bytes(damaged))
  out = tmp_path / 'out'
  (out / 'blocked.webp').mkdir(parents=True)  # a folder where a file must go
  gone = tmp_path / 'gone'  # a shard that cannot be opened: read_error
  gone.mkdir()
  os.symlink(str(tmp_path / 'deleted.tfrecord'), gone / 'gone.tfrecord')
  # Named outright, a file that is no TFRecord at all: one not_tfrecord row, no resync.
  notes = tmp_path / 'notes.json'
  notes.write_text(json.dumps({'split': 'train', 'notes': 'x' * 5000}))
  return str(cases), str(framing), str(out), str(gone), str(notes)


ARGS = ['--image_key', 'image', '--id_key', 'id', '--format', 'webp', '--name_template',
        '{id}.{ext}', '--max_pixels', '1000000', '--max_failures', '100']
EXPECTED_FAILURES = {
    'non_finite': 1, 'missing_feature': 1, 'proto_parse': 1, 'unsupported_dtype': 1,
    'shape_mismatch': 1, 'decode_error': 1, 'encode_error': 1, 'write_error': 1,
    'unsafe_name': 1, 'name_collision': 1, 'too_many_pixels': 1, 'crc_mismatch': 1,
    'record_too_large': 1, 'truncated': 1, 'read_error': 1, 'not_tfrecord': 1,
}


def test_every_reason_code_with_counters_and_accounting(bad_inputs):
  cases, framing, out, gone, notes = bad_inputs
  gone_file = os.path.join(gone, 'gone.tfrecord')
  argv = ['--input', cases, '--input', framing, '--input', gone, '--input', notes,
          '--output', out, *ARGS,
          '--runner', 'FnApiRunner']
  options = PipelineOptions(argv)
  plan = plan_lib.plan_export(
      plan_lib.Request.from_options(options.view_as(export_images.ExportOptions)), 0.0)
  pipeline = beam.Pipeline(options=options)
  _ = pipeline | ptransforms.ExportImages(plan.config)
  result = pipeline.run()
  result.wait_until_finish()

  assert set(EXPECTED_FAILURES) == set(errors.REASONS)
  rows = [json.loads(line) for line in open(os.path.join(out, '_dead_letter.jsonl'))]
  assert collections.Counter(r['reason'] for r in rows) == EXPECTED_FAILURES
  for row in rows:
    assert row['source'] in (cases, framing, gone_file, notes) and row['offset'] is not None
    assert row['index'] is not None and row['message']
  by_reason = {r['reason']: r for r in rows}
  assert by_reason['write_error']['stage'] == 'write'
  assert 'blocked.webp' in by_reason['write_error']['message']
  assert by_reason['unsafe_name']['stage'] == 'name'
  assert by_reason['encode_error']['stage'] == 'encode'
  assert by_reason['crc_mismatch']['index'] == 1
  assert by_reason['truncated']['source'] == framing
  assert by_reason['read_error']['source'] == gone_file
  assert 'No such file' in by_reason['read_error']['message']
  not_tfrecord = by_reason['not_tfrecord']
  assert (not_tfrecord['source'], not_tfrecord['index'], not_tfrecord['offset']) == (
      notes, 0, 0)
  assert not_tfrecord['message'].startswith('not a TFRecord file')
  assert 'JSON text' in not_tfrecord['message']

  counters = collections.Counter()  # summed over steps (collisions undo a write)
  for counter in result.metrics().query(
      MetricsFilter().with_namespace('unrecord'))['counters']:
    counters[counter.key.metric.name] += counter.committed
  assert {k[len('failed_'):]: v for k, v in counters.items()
          if k.startswith('failed_') and v} == EXPECTED_FAILURES

  written = sorted(os.listdir(out))
  images = [n for n in written if n.endswith('.webp') and n != 'blocked.webp']
  assert sorted(images) == ['dup.webp', 'frame0.webp', 'frame2.webp', 'good0.webp',
                            'good1.webp']
  report = json.load(open(os.path.join(out, '_report.json')))
  # framing.tfrecord: 3 frames, one bomb, one stub; gone.tfrecord: one unreadable file;
  # notes.json: one file that is no TFRecord
  images_in_input = len(CASES) + 5 + 1 + 1
  assert report['written'] + report['failed'] == images_in_input
  assert report['written'] == counters['images_written'] == len(images)
  manifest = [row['path'] for row in outputs.manifest_rows(out)]
  assert sorted(manifest) == sorted(images)


def test_the_command_sums_the_counters_in_its_summary_and_fails(unrecord, bad_inputs):
  cases, framing, out, gone, notes = bad_inputs
  args = [a for a in ARGS]
  args[args.index('--max_failures') + 1] = '15'
  result = unrecord('export', '--input', f'{cases},{framing},{gone},{notes}', '--output',
                    out, *args)
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'failed 16' in result.stderr
  for reason in EXPECTED_FAILURES:
    assert f'{reason}: 1' in result.stderr
  assert not os.path.exists(os.path.join(out, '_SUCCESS'))
