"""ReadImageRecords and DecodeImages in a pipeline: outputs, dead letters, metrics."""

import os

import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
import apache_beam as beam

from tests import fixtures
from transforms import ptransforms
from transforms.inputs import record_ranges
from transforms.inputs import tfrecord

# FnApiRunner is the engine behind DirectRunner; naming it skips the Prism download.
OPTIONS = ['--runner=FnApiRunner']


def _photo_record(i):
  return fixtures.example({
      'image': fixtures.bytes_feature(fixtures.serialized_tensor(fixtures.photo(i, 10, 8))),
      'id': fixtures.bytes_feature(b'p%d' % i)})


@pytest.fixture
def inputs(tmp_path):
  plain = fixtures.write_tfrecord(str(tmp_path / 'a.tfrecord'),
                                  [_photo_record(i) for i in range(3)])
  gzipped = fixtures.write_tfrecord(str(tmp_path / 'b.tfrecord.gz'),
                                    [_photo_record(i) for i in range(3, 5)], 'GZIP')
  damaged_path = str(tmp_path / 'c.tfrecord')
  data = bytearray(b''.join(tfrecord.encode_record(_photo_record(i)) for i in range(5, 8)))
  second = len(tfrecord.encode_record(_photo_record(5)))
  data[second + 40] ^= 0xFF  # inside record 1's payload
  open(damaged_path, 'wb').write(bytes(data))
  return plain, gzipped, damaged_path


def test_read_and_decode_with_dead_letters_and_metrics(inputs):
  plain, gzipped, damaged = inputs
  pipeline = TestPipeline(options=PipelineOptions(OPTIONS))
  result = pipeline | 'Read' >> ptransforms.ReadImageRecords([plain, gzipped, damaged])
  decoded = result.records | ptransforms.DecodeImages()
  ids = decoded.images | beam.Map(
      lambda image: (image.features['id'], os.path.basename(image.ref.path),
                     image.ref.index, int(image.pixels.astype(np.int64).sum())))
  expected = [(f'p{i}', name, index, int(fixtures.photo(i, 10, 8).astype(np.int64).sum()))
              for i, name, index in [(0, 'a.tfrecord', 0), (1, 'a.tfrecord', 1),
                                     (2, 'a.tfrecord', 2), (3, 'b.tfrecord.gz', 0),
                                     (4, 'b.tfrecord.gz', 1), (5, 'c.tfrecord', 0),
                                     (7, 'c.tfrecord', 2)]]
  assert_that(ids, equal_to(expected), label='CheckImages')
  dead = result.dead_letter | beam.Map(
      lambda f: (f.reason, f.stage, os.path.basename(f.path), f.index, f.offset))
  second = len(tfrecord.encode_record(_photo_record(5)))
  assert_that(dead, equal_to([('crc_mismatch', 'read', 'c.tfrecord', 1, second)]),
              label='CheckDeadLetter')
  run = pipeline.run()
  run.wait_until_finish()
  counters = {r.key.metric.name: r.committed for r in
              run.metrics().query(MetricsFilter().with_namespace('unrecord'))['counters']}
  assert counters['records_read'] == 7
  assert counters['images_decoded'] == 7
  assert counters['failed_crc_mismatch'] == 1


def test_undecodable_record_goes_to_the_decode_dead_letter(tmp_path):
  path = fixtures.write_tfrecord(str(tmp_path / 'x.tfrecord'), [
      _photo_record(0), fixtures.example({'label': fixtures.int64_feature(1)})])
  with TestPipeline(options=PipelineOptions(OPTIONS)) as pipeline:
    decoded = (pipeline | ptransforms.ReadImageRecords([path])).records | ptransforms.DecodeImages()
    assert_that(decoded.images | beam.Map(lambda i: i.ref.index), equal_to([0]),
                label='Good')
    assert_that(decoded.dead_letter | beam.Map(
        lambda f: (f.reason, f.stage, f.index, f.payload is not None)),
        equal_to([('missing_feature', 'decode', 1, True)]), label='Bad')


def test_one_big_file_is_split_into_ranges_and_read_once(tmp_path):
  path = fixtures.write_tfrecord(str(tmp_path / 'big.tfrecord'),
                                 [_photo_record(i % 5) for i in range(40)])
  config = record_ranges.ReadConfig(split_bytes=2000)
  with open(path, 'rb') as f:
    assert len(tfrecord.plan_ranges(f, path, size=os.path.getsize(path),
                                    split_bytes=2000)) > 4
  with TestPipeline(options=PipelineOptions(OPTIONS)) as pipeline:
    records = (pipeline | ptransforms.ReadImageRecords([path], config)).records
    assert_that(records | beam.Map(lambda r: r[0].index), equal_to(list(range(40))))
