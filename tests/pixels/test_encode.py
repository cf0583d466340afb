"""Encoders: colours as meant, lossless round trips, JPEG quality."""

import io

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from tests import fixtures
from transforms import errors
from transforms.pixels import encode


def _decode_with_pillow(data: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(data)))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return float('inf') if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _primaries() -> np.ndarray:
  pixels = np.zeros((16, 24, 3), np.uint8)
  pixels[:, :8, 0] = 255  # red
  pixels[:, 8:16, 1] = 255  # green
  pixels[:, 16:, 2] = 255  # blue
  return pixels


SPECS = [
    encode.EncodeSpec('png', png_encoder='fpng'), encode.EncodeSpec('png',
                                                                    png_encoder='opencv'),
    encode.EncodeSpec('png', png_encoder='pillow'), encode.EncodeSpec('jpeg'),
    encode.EncodeSpec('webp'), encode.EncodeSpec('webp', webp_lossless=True),
    encode.EncodeSpec('tiff'), encode.EncodeSpec('bmp'),
    encode.EncodeSpec('jpeg', jpeg_progressive=True),
]
IDS = ['png-fpng', 'png-opencv', 'png-pillow', 'jpeg', 'webp', 'webp-lossless', 'tiff',
       'bmp', 'jpeg-progressive']


@pytest.mark.parametrize('spec', SPECS, ids=IDS)
def test_red_stays_red_in_every_format(spec):
  pixels = _primaries()
  decoded = _decode_with_pillow(encode.encode(pixels, spec))[:, :, :3].astype(int)
  for column, channel in ((4, 0), (12, 1), (20, 2)):
    colour = decoded[8, column]
    assert colour[channel] > 200 and np.delete(colour, channel).max() < 60, (spec, colour)


@pytest.mark.parametrize('spec', [s for s in SPECS if s.lossless],
                         ids=[i for i, s in zip(IDS, SPECS) if s.lossless])
@pytest.mark.parametrize('channels', [1, 3, 4])
def test_lossless_formats_round_trip_exactly(spec, channels):
  photo = fixtures.photo(3, 33, 27)
  pixels = {1: fixtures.gray_photo(33, 27), 3: photo,
            4: np.dstack([photo, fixtures.gray_photo(33, 27)])}[channels]
  decoded = _decode_with_pillow(encode.encode(pixels, spec))
  if spec.format == 'bmp' and channels == 1:  # BMP stores gray as a palette
    decoded = np.asarray(Image.open(io.BytesIO(encode.encode(pixels, spec))).convert('L'))
  if spec.format == 'webp' and channels == 1:  # WebP has no gray mode: R = G = B
    assert np.array_equal(decoded[:, :, 0], decoded[:, :, 1])
    assert np.array_equal(decoded[:, :, 0], decoded[:, :, 2])
    decoded = decoded[:, :, 0]
  assert np.array_equal(decoded, pixels)


@pytest.mark.parametrize('fmt', ['png', 'tiff'])
def test_16bit_round_trips_in_png_and_tiff(fmt):
  depth = fixtures.photo_16bit()
  data = encode.encode(depth, encode.EncodeSpec(fmt))
  decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
  assert decoded.dtype == np.uint16 and np.array_equal(decoded, depth)
  color16 = np.dstack([depth, depth[::-1], depth[:, ::-1]])
  decoded = cv2.imdecode(np.frombuffer(encode.encode(color16, encode.EncodeSpec(fmt)),
                                       np.uint8), cv2.IMREAD_UNCHANGED)
  assert np.array_equal(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), color16)


def test_float32_tiff_keeps_values_exactly():
  values = np.random.default_rng(1).normal(size=(7, 9, 3)).astype(np.float32)
  data = encode.encode(values, encode.EncodeSpec('tiff'))
  decoded = tifffile.imread(io.BytesIO(data))
  assert decoded.dtype == np.float32 and np.array_equal(decoded, values)


@pytest.mark.parametrize('index', range(4))
def test_jpeg_quality_95_is_at_least_40_db_on_photos(index):
  photo = fixtures.photo(index, 224, 224)
  decoded = _decode_with_pillow(encode.encode(photo, encode.EncodeSpec('jpeg', quality=95)))
  assert _psnr(decoded, photo) >= 40.0


def test_jpeg_subsampling_420_makes_smaller_files():
  photo = fixtures.photo(1, 224, 224)
  full = encode.encode(photo, encode.EncodeSpec('jpeg', quality=95))
  sub = encode.encode(photo, encode.EncodeSpec('jpeg', quality=95, jpeg_subsampling='420'))
  assert len(sub) < len(full)


def test_fpng_output_is_a_standard_png_about_as_small_as_opencv():
  photo = fixtures.photo(0, 224, 224)
  fast = encode.encode(photo, encode.EncodeSpec('png', png_encoder='fpng'))
  default = encode.encode(photo, encode.EncodeSpec('png', png_encoder='opencv'))
  assert np.array_equal(cv2.cvtColor(cv2.imdecode(np.frombuffer(fast, np.uint8), 1),
                                     cv2.COLOR_BGR2RGB), photo)
  assert len(fast) < 1.2 * len(default)


def test_channel_fitting_for_formats_without_alpha_and_two_channels():
  gray_alpha = np.dstack([fixtures.gray_photo(), np.full((28, 28), 200, np.uint8)])
  png = _decode_with_pillow(encode.encode(gray_alpha, encode.EncodeSpec('png')))
  assert png.shape == (28, 28, 4) and np.array_equal(png[:, :, 0], gray_alpha[:, :, 0])
  assert np.array_equal(png[:, :, 3], gray_alpha[:, :, 1])
  jpeg = _decode_with_pillow(encode.encode(gray_alpha, encode.EncodeSpec('jpeg')))
  assert jpeg.ndim == 2
  rgba = np.dstack([fixtures.photo(), np.zeros((48, 40), np.uint8)])
  assert _decode_with_pillow(encode.encode(rgba, encode.EncodeSpec('jpeg'))).shape == \
      (48, 40, 3)


def test_formats_that_cannot_hold_the_pixels_say_so():
  with pytest.raises(errors.EncodeError) as info:
    encode.encode(fixtures.photo_16bit(), encode.EncodeSpec('jpeg'))
  assert info.value.reason == 'encode_error'
  with pytest.raises(errors.ConfigError):
    encode.EncodeSpec('gif')
