"""The whole record -> file bytes path, pixel-exact over dtypes and layouts."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from tests import fixtures
from transforms import errors
from transforms.images import decode
from transforms.images import render
from transforms.images import schema
from transforms.inputs.tfrecord import RecordRef
from transforms.pixels import encode
from transforms.pixels import normalize

REF = RecordRef('/data/train-00001-of-00004.tfrecord', 12, 3400)


# ---------------------------------------------------------------------------------------
# Record -> file bytes, pixel-exact


def _tensor_record(array: np.ndarray) -> bytes:
  return fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(array)),
                           'label': fixtures.int64_feature(1)})


def _list_record(array: np.ndarray) -> bytes:
  return fixtures.example({'image': fixtures.int64_feature(*array.ravel()),
                           'image/shape': fixtures.int64_feature(*array.shape)})


def _export(payload: bytes, fmt: str = 'png', **render_kwargs):
  """What the job does for one record: detect over it, render each image, decode the file."""
  found = schema.detect_schema([(REF, payload)])
  images = decode.decode_record(REF, payload, decode.ImageSpec(key=found.image.key))
  config = render.RenderConfig(encode=encode.EncodeSpec(fmt), **render_kwargs)
  config = render.RenderConfig(
      encode=config.encode, normalize=config.normalize,
      value_range=normalize.dataset_value_range(config.normalize, found.image))
  files = [render.render(image, config).data for image in images]
  return [cv2.cvtColor(d, cv2.COLOR_BGR2RGB) if d.ndim == 3 and d.shape[2] == 3 else
          cv2.cvtColor(d, cv2.COLOR_BGRA2RGBA) if d.ndim == 3 else d
          for d in (cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_UNCHANGED)
                    for f in files)]


def _photo(channels: int) -> np.ndarray:
  color = fixtures.photo(2, 18, 14)
  if channels == 1:
    return color[:, :, 1]
  if channels == 4:
    return np.dstack([color, fixtures.gray_photo(18, 14)])
  return color


DTYPE_CASES = {
    'uint8': lambda a: a,
    'uint16': lambda a: a.astype(np.uint16) * 257,
    'float16_01': lambda a: (a / 255.0).astype(np.float16),
    'float32_01': lambda a: (a / 255.0).astype(np.float32),
    'float64_01': lambda a: a / 255.0,
    'float16_pm1': lambda a: (a / 127.5 - 1).astype(np.float16),
    'float32_pm1': lambda a: (a / 127.5 - 1).astype(np.float32),
    'float64_pm1': lambda a: a / 127.5 - 1,
}


def _layouts(pixels: np.ndarray):
  """The same image stored as HW, HW1, HWC, CHW and a 2-image NHWC batch."""
  layouts = {}
  if pixels.ndim == 2:
    layouts['hw'] = pixels
    layouts['hw1'] = pixels[:, :, None]
  else:
    layouts['hwc'] = pixels
    layouts['chw'] = pixels.transpose(2, 0, 1)
  batch_item = pixels if pixels.ndim == 3 else pixels[:, :, None]
  layouts['nhwc'] = np.stack([batch_item, batch_item[::-1]])
  return layouts


@pytest.mark.parametrize('dtype_case', sorted(DTYPE_CASES))
@pytest.mark.parametrize('channels', [1, 3, 4])
def test_lossless_png_round_trip_is_pixel_exact(dtype_case, channels):
  original = _photo(channels)
  stored = DTYPE_CASES[dtype_case](original)
  expected = stored if dtype_case == 'uint16' else original
  for layout, array in _layouts(stored).items():
    files = _export(_tensor_record(array))
    wanted = [expected] if not layout.startswith('n') else [expected, expected[::-1]]
    assert len(files) == len(wanted), layout
    for got, want in zip(files, wanted):
      assert got.dtype == want.dtype, (layout, got.dtype)
      assert np.array_equal(got, want), layout


@pytest.mark.parametrize('channels', [1, 3])
def test_int64_lists_round_trip_exactly(channels):
  original = _photo(channels)
  (got,) = _export(_list_record(original.astype(np.int64)))
  assert np.array_equal(got, original)


@pytest.mark.parametrize('fmt', ['tiff', 'bmp'])
def test_other_lossless_formats_round_trip(fmt):
  original = _photo(3)
  (got,) = _export(_tensor_record((original / 255.0).astype(np.float32)), fmt)
  assert np.array_equal(got, original)


def test_16bit_tensor_is_scaled_to_8_bits_with_rounding_where_16_bits_do_not_fit():
  depth = fixtures.photo_16bit()
  (got,) = _export(_tensor_record(depth), 'bmp')  # lossless, 8-bit only
  assert got.dtype == np.uint8
  assert np.array_equal(got, np.rint(depth / 257.0).astype(np.uint8))
  (got,) = _export(_tensor_record(depth), 'jpeg')
  assert got.dtype == np.uint8


def test_encoded_source_in_the_same_format_passes_through_byte_identical():
  jpeg = fixtures.encode_jpeg(fixtures.photo(1, 64, 48), quality=80)
  payload = fixtures.example({'image/encoded': fixtures.bytes_feature(jpeg)})
  spec = decode.ImageSpec(key='image/encoded', decode_encoded=False)
  (image,) = decode.decode_record(REF, payload, spec)
  assert image.pixels is None and image.stored_shape == (64, 48, 3)
  rendered = render.render(image, render.RenderConfig(encode=encode.EncodeSpec('jpeg')))
  assert rendered.passthrough and rendered.data == jpeg
  converted = render.render(image, render.RenderConfig(encode=encode.EncodeSpec('png')))
  assert not converted.passthrough
  decoded = np.asarray(Image.open(io.BytesIO(converted.data)))
  assert np.array_equal(decoded, decode.image_formats.decode_encoded(jpeg))
  forced = render.render(image, render.RenderConfig(encode=encode.EncodeSpec('jpeg'),
                                                    reencode=True))
  assert not forced.passthrough and forced.data != jpeg


def test_truncated_encoded_image_is_caught_without_decoding():
  jpeg = fixtures.encode_jpeg(fixtures.photo(1, 64, 48))
  payload = fixtures.example({'image/encoded': fixtures.bytes_feature(jpeg[:-200])})
  with pytest.raises(errors.DecodeError) as info:
    decode.decode_record(REF, payload, decode.ImageSpec(decode_encoded=False))
  assert info.value.reason == 'decode_error' and 'truncated' in str(info.value)


def test_bgr_tensor_is_written_with_the_colours_it_meant():
  rgb = fixtures.photo(0)
  bgr = rgb[..., ::-1]
  for fmt in ('png', 'tiff', 'bmp'):
    (got,) = _export(_tensor_record(np.ascontiguousarray(bgr)), fmt,
                     normalize=normalize.NormalizeSpec(channel_order='bgr'))
    assert np.array_equal(got, rgb), fmt
