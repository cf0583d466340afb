"""Pixels (RGB(A) order, uint8/uint16/float32) -> encoded image bytes.

The library per format was chosen by measurement (docs/benchmarks.md, "Encoders"):
PNG 8-bit RGB/RGBA with fpng (about 10x OpenCV, files about 3% larger, standard PNG),
gray and 16-bit PNG with OpenCV; JPEG, TIFF and BMP with OpenCV; WebP with Pillow.
OpenCV wants BGR(A): the swap happens here, so callers always pass RGB(A).
"""

from __future__ import annotations

import dataclasses
import io
from typing import Optional

import cv2
import numpy as np
from PIL import Image

from transforms import errors

try:
  import fpng
except ImportError:  # fpng is optional: OpenCV encodes PNG when it is missing
  fpng = None

FORMATS = ('png', 'jpeg', 'webp', 'tiff', 'bmp')
PNG_ENCODERS = ('auto', 'fpng', 'opencv', 'pillow')
JPEG_SUBSAMPLING = ('auto', '444', '422', '420')
_OPENCV_SUBSAMPLING = {
    '444': cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
    '422': cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
    '420': cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420,
}
EXTENSIONS = {'png': 'png', 'jpeg': 'jpg', 'webp': 'webp', 'tiff': 'tif', 'bmp': 'bmp'}
_HOLDS_16BIT = ('png', 'tiff')
_HOLDS_FLOAT = ('tiff',)
_HOLDS_ALPHA = ('png', 'webp', 'tiff', 'bmp')


@dataclasses.dataclass(frozen=True)
class EncodeSpec:
  """Output format and its settings. See docs/export.md, "Formats and encoders"."""
  format: str = 'png'
  quality: int = 95
  png_compression: Optional[int] = None
  png_encoder: str = 'auto'
  webp_lossless: bool = False
  jpeg_progressive: bool = False
  # auto: 4:4:4 from quality 90 up (4:2:0 caps PSNR below 40 dB on detailed photos),
  # else 4:2:0 (smaller files).
  jpeg_subsampling: str = 'auto'

  def __post_init__(self):
    if self.format not in FORMATS:
      raise errors.ConfigError(
          f'format must be one of {", ".join(FORMATS)}, got {self.format!r}')
    if not 1 <= self.quality <= 100:
      raise errors.ConfigError(f'quality must be 1..100, got {self.quality}')
    if self.png_compression is not None and not 0 <= self.png_compression <= 9:
      raise errors.ConfigError(f'png_compression must be 0..9, got {self.png_compression}')
    if self.png_encoder not in PNG_ENCODERS:
      raise errors.ConfigError(
          f'png_encoder must be one of {", ".join(PNG_ENCODERS)}, got {self.png_encoder!r}')
    if self.jpeg_subsampling not in JPEG_SUBSAMPLING:
      raise errors.ConfigError(
          f'jpeg_subsampling must be one of {", ".join(JPEG_SUBSAMPLING)}, got '
          f'{self.jpeg_subsampling!r}')
    if self.png_encoder == 'fpng' and fpng is None:
      raise errors.ConfigError('--png_encoder fpng needs the fpng package installed')

  @property
  def extension(self) -> str:
    return EXTENSIONS[self.format]

  @property
  def holds_16bit(self) -> bool:
    return self.format in _HOLDS_16BIT

  @property
  def holds_float(self) -> bool:
    return self.format in _HOLDS_FLOAT

  @property
  def holds_alpha(self) -> bool:
    return self.format in _HOLDS_ALPHA

  @property
  def lossless(self) -> bool:
    return self.format in ('png', 'tiff', 'bmp') or (
        self.format == 'webp' and self.webp_lossless)


def png_encoder_for(pixels: np.ndarray, spec: EncodeSpec) -> str:
  """Which library encodes these PNG pixels.

  fpng takes 8-bit RGB/RGBA only and has no compression levels: other pixels, or a
  --png_compression level, go to OpenCV even when fpng was asked for.
  """
  fits_fpng = (fpng is not None and pixels.dtype == np.uint8 and pixels.ndim == 3 and
               pixels.shape[2] in (3, 4) and spec.png_compression is None)
  if spec.png_encoder in ('auto', 'fpng'):
    return 'fpng' if fits_fpng else 'opencv'
  return spec.png_encoder


def fit_channels(pixels: np.ndarray, spec: EncodeSpec) -> np.ndarray:
  """Adapts channel counts the format cannot hold (docs/export.md, "Normalization": Channels).

  2 channels (gray + alpha): kept as gray + alpha expanded to RGBA where alpha is held,
  else gray. 4 channels where alpha is not held (JPEG): the alpha is dropped.
  """
  if pixels.ndim == 3 and pixels.shape[2] == 2:
    gray, alpha = pixels[:, :, 0], pixels[:, :, 1]
    if spec.holds_alpha:
      return np.dstack([gray, gray, gray, alpha])
    return np.ascontiguousarray(gray)
  if pixels.ndim == 3 and pixels.shape[2] == 4 and not spec.holds_alpha:
    return np.ascontiguousarray(pixels[:, :, :3])
  return pixels


def encode(pixels: np.ndarray, spec: EncodeSpec) -> bytes:
  """Encodes HxW or HxWxC RGB(A) pixels; raises EncodeError(encode_error) on failure."""
  pixels = fit_channels(pixels, spec)
  if pixels.dtype == np.uint16 and not spec.holds_16bit:
    raise errors.EncodeError(errors.ENCODE_ERROR,
                             f'{spec.format} cannot hold 16-bit pixels')
  if pixels.dtype == np.float32 and not spec.holds_float:
    raise errors.EncodeError(errors.ENCODE_ERROR,
                             f'{spec.format} cannot hold float pixels')
  try:
    if spec.format == 'png':
      encoder = png_encoder_for(pixels, spec)
      if encoder == 'fpng':
        data = fpng.from_ndarray(np.ascontiguousarray(pixels))
        if not data:
          raise errors.EncodeError(errors.ENCODE_ERROR, 'fpng could not encode the image')
        return data
      if encoder == 'pillow':
        return _pillow(pixels, 'PNG', compress_level=6 if spec.png_compression is None
                       else spec.png_compression)
      params = [] if spec.png_compression is None else [
          cv2.IMWRITE_PNG_COMPRESSION, spec.png_compression]
      return _opencv('.png', pixels, params)
    if spec.format == 'jpeg':
      subsampling = spec.jpeg_subsampling
      if subsampling == 'auto':
        subsampling = '444' if spec.quality >= 90 else '420'
      params = [cv2.IMWRITE_JPEG_QUALITY, spec.quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                _OPENCV_SUBSAMPLING[subsampling]]
      if spec.jpeg_progressive:
        params += [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
      return _opencv('.jpg', pixels, params)
    if spec.format == 'webp':
      if spec.webp_lossless:
        # method 0 is libwebp's fastest lossless setting; the pixels are the same at
        # every method, only the size differs (docs/benchmarks.md).
        return _pillow(pixels, 'WEBP', lossless=True, exact=True, method=0, quality=50)
      return _pillow(pixels, 'WEBP', quality=spec.quality)
    if spec.format == 'tiff':
      return _opencv('.tif', pixels, [])
    return _opencv('.bmp', pixels, [])
  except (cv2.error, OSError, ValueError) as e:
    raise errors.EncodeError(errors.ENCODE_ERROR,
                             f'{spec.format} encoder failed ({e})') from e


def _opencv(extension: str, pixels: np.ndarray, params) -> bytes:
  if pixels.ndim == 3 and pixels.shape[2] == 3:
    pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
  elif pixels.ndim == 3 and pixels.shape[2] == 4:
    pixels = cv2.cvtColor(pixels, cv2.COLOR_RGBA2BGRA)
  ok, buffer = cv2.imencode(extension, pixels, params)
  if not ok:
    raise errors.EncodeError(errors.ENCODE_ERROR, f'OpenCV could not encode {extension}')
  return buffer.tobytes()


def _pillow(pixels: np.ndarray, fmt: str, **params) -> bytes:
  out = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(pixels)).save(out, format=fmt, **params)
  return out.getvalue()
