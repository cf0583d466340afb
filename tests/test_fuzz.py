"""Property tests: random and mutated bytes never raise anything but unrecord's typed errors."""

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tests import fixtures
from transforms import errors
from transforms.images import decode
from transforms.images import render
from transforms.inputs.tfrecord import RecordRef
from transforms.pixels import encode
from transforms.pixels import normalize
from transforms.records import tensor_proto

REF = RecordRef('fuzz', 0, 0)
PHOTO = fixtures.photo(0, 12, 10)
SEEDS = [
    fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(
        (PHOTO / 255.0).astype(np.float32)))}),
    fixtures.example({'image/raw': fixtures.bytes_feature(PHOTO.tobytes()),
                      'image/shape': fixtures.int64_feature(12, 10, 3)}),
    fixtures.example({'image': fixtures.int64_feature(*PHOTO[:, :, 0].ravel()),
                      'image/height': fixtures.int64_feature(12),
                      'image/width': fixtures.int64_feature(10)}),
    fixtures.example({'image/encoded': fixtures.bytes_feature(fixtures.encode_png(PHOTO))}),
    fixtures.example({'image/encoded': fixtures.bytes_feature(fixtures.encode_jpeg(PHOTO))}),
    fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(
        np.stack([PHOTO, PHOTO]).transpose(0, 3, 1, 2)))}),
]
CONFIG = render.RenderConfig(encode=encode.EncodeSpec('png'))
FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _through_the_job_path(payload, spec=decode.ImageSpec()):
  """Decode and render like a worker; only UnrecordError may escape."""
  try:
    for image in decode.decode_record(REF, payload, spec):
      render.render(image, CONFIG)
  except errors.UnrecordError:
    pass


@FUZZ
@given(st.binary(max_size=600))
def test_random_payloads(payload):
  _through_the_job_path(payload)


@FUZZ
@given(st.sampled_from(range(len(SEEDS))), st.data())
def test_mutated_records(seed, data):
  payload = bytearray(SEEDS[seed])
  for _ in range(data.draw(st.integers(1, 4))):
    position = data.draw(st.integers(0, len(payload) - 1))
    payload[position] = data.draw(st.integers(0, 255))
  _through_the_job_path(bytes(payload))
  _through_the_job_path(bytes(payload), decode.ImageSpec(decode_encoded=False))


@FUZZ
@given(st.data())
def test_mutated_and_random_tensor_protos(data):
  proto = bytearray(fixtures.serialized_tensor(PHOTO))
  position = data.draw(st.integers(0, len(proto) - 1))
  proto[position] = data.draw(st.integers(0, 255))
  for candidate in (bytes(proto), data.draw(st.binary(max_size=200))):
    try:
      tensor_proto.parse_tensor(candidate, max_elements=1 << 20)
    except errors.DecodeError:
      pass


@FUZZ
@given(hnp.arrays(st.sampled_from([np.uint8, np.uint16, np.int32, np.float16, np.float32,
                                   np.float64, np.bool_]),
                  hnp.array_shapes(min_dims=2, max_dims=3, max_side=6)),
       st.sampled_from(['auto', 'minmax', '0,1', '-1,1', '0,255']),
       st.sampled_from(['8', '16', 'float']), st.sampled_from(['fail', 'clip']))
def test_normalize_any_array(pixels, value_range, bits, non_finite):
  layout = 'hw' if pixels.ndim == 2 else 'hwc'
  spec = normalize.NormalizeSpec(value_range=value_range, non_finite=non_finite)
  try:
    result = normalize.normalize(pixels, layout, spec, bits=bits)
  except errors.DecodeError:
    return
  expected = {'8': np.uint8, '16': np.uint16, 'float': np.float32}[bits]
  if not (bits != 'float' and pixels.dtype == np.uint8 and bits == '8'):
    assert result.pixels.dtype == expected
