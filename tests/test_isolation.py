"""A native decoder crash is contained: the image is dead-lettered, the job goes on."""

import numpy as np
import pytest
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from tests import fixtures
from transforms import errors
from transforms import ptransforms
from transforms.images import decode
from transforms.pixels import image_formats
from transforms.pixels import isolation

CRASHING = 'tests.crashing_decoder:decode'


def _marked_png(marker: bytes) -> bytes:
  return fixtures.encode_png(fixtures.photo(1, 16, 16)) + marker  # after IEND: still a PNG


def test_isolated_call_survives_a_segfault_and_a_hang():
  png = fixtures.encode_png(fixtures.photo(0, 16, 16))
  call = isolation.IsolatedCall(CRASHING, timeout=5)
  try:
    assert np.array_equal(call(png, 'png', 1 << 20), image_formats.decode_encoded(png))
    with pytest.raises(errors.DecodeError) as info:
      call(_marked_png(b'CRASH-ME'), 'png', 1 << 20)
    assert info.value.reason == 'decode_error' and 'SIGSEGV' in str(info.value)
    assert np.array_equal(call(png, 'png', 1 << 20), fixtures.photo(0, 16, 16))
    with pytest.raises(errors.DecodeError) as info:
      call(_marked_png(b'HANG-ME'), 'png', 1 << 20)
    assert 'did not finish within 5 s' in str(info.value)
    with pytest.raises(errors.DecodeError) as info:
      call(b'\x89PNG\r\n\x1a\n' + b'\x00' * 40, 'png', 1 << 20)
    assert info.value.reason == 'decode_error'
    assert np.array_equal(call(png, 'png', 1 << 20), fixtures.photo(0, 16, 16))
  finally:
    call.close()


def test_pipeline_dead_letters_the_crashing_image_and_decodes_the_rest(tmp_path):
  payloads = [fixtures.example({'image': fixtures.bytes_feature(data)}) for data in (
      fixtures.encode_png(fixtures.photo(0, 16, 16)), _marked_png(b'CRASH-ME'),
      fixtures.encode_png(fixtures.photo(2, 16, 16)))]
  path = fixtures.write_tfrecord(str(tmp_path / 'x.tfrecord'), payloads)
  spec = decode.ImageSpec(decoder=CRASHING, isolate_decoder=True)
  with beam.Pipeline(options=PipelineOptions(['--runner=FnApiRunner'])) as pipeline:
    decoded = (pipeline | ptransforms.ReadImageRecords([path])).records | ptransforms.DecodeImages(spec)
    assert_that(decoded.images | beam.Map(lambda i: i.ref.index), equal_to([0, 2]),
                label='Decoded')
    assert_that(decoded.dead_letter | beam.Map(
        lambda f: (f.reason, f.index, 'SIGSEGV' in f.message, f.payload == payloads[1])),
        equal_to([('decode_error', 1, True, True)]), label='DeadLetter')
