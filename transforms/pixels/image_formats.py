"""Already-encoded images (PNG, JPEG, WebP, BMP, TIFF, GIF): sniffing and safe decoding.

The header is read first (Pillow opens lazily) so an image claiming too many pixels is
rejected before any pixel buffer exists. Pixels come back in RGB(A) order with their
bit depth kept (16-bit PNG/TIFF stay uint16).
"""

from __future__ import annotations

import io
import struct
import warnings
from typing import Optional, Tuple

import cv2
import numpy as np
from PIL import Image

from transforms import errors

DEFAULT_MAX_PIXELS = 1 << 26  # 67 megapixels, e.g. 8192 x 8192

_MAGIC = (
    (b'\x89PNG\r\n\x1a\n', 'png'),
    (b'\xff\xd8\xff', 'jpeg'),
    (b'GIF87a', 'gif'),
    (b'GIF89a', 'gif'),
    (b'II*\x00', 'tiff'),
    (b'MM\x00*', 'tiff'),
    (b'BM', 'bmp'),
)
FORMATS = ('png', 'jpeg', 'webp', 'bmp', 'tiff', 'gif')
_MIN_ENCODED_SIZE = 26  # smaller than any real header + one pixel of these formats

# OpenCV keeps 16-bit colour and alpha where Pillow would not (Pillow reads 48-bit PNG as
# 8-bit RGB); Pillow is strict about truncated JPEGs where libjpeg via OpenCV fills grey.
_OPENCV_FORMATS = ('png', 'tiff', 'webp')


def sniff_format(data) -> Optional[str]:
  """The encoded image format of `data` (bytes-like) from its magic bytes, or None."""
  if len(data) < _MIN_ENCODED_SIZE:
    return None
  head = bytes(data[:12])
  if head[:4] == b'RIFF' and head[8:12] == b'WEBP':
    return 'webp'
  for magic, name in _MAGIC:
    if head.startswith(magic):
      return name
  return None


def _declared_size(data: bytes) -> Optional[Tuple[int, int]]:
  """(width, height) read straight from fixed header fields, for formats that have them."""
  if data.startswith(b'\x89PNG') and len(data) >= 24:
    return struct.unpack('>II', data[16:24])
  if data.startswith(b'GIF') and len(data) >= 10:
    return struct.unpack('<HH', data[6:10])
  if data.startswith(b'BM') and len(data) >= 26:
    width, height = struct.unpack('<ii', data[18:26])
    return abs(width), abs(height)
  return None


# No image codec here stores more pixels per byte than this (deflate tops out near
# 1032:1 on bytes, i.e. about 8,300 1-bit pixels per byte); a header claiming more is
# lying about its size, and decoding it would allocate for pixels that are not there.
MAX_PIXELS_PER_BYTE = 20000


def _check_pixels(width: int, height: int, fmt: str, max_pixels: int,
                  size: Optional[int] = None) -> None:
  if width * height > max_pixels:
    raise errors.DecodeError(
        errors.TOO_MANY_PIXELS,
        f'encoded {fmt} image claims {width}x{height} = {width * height} pixels, more '
        f'than --max_pixels={max_pixels}; it was not decoded')
  if size is not None and width * height > MAX_PIXELS_PER_BYTE * max(size, 1):
    raise errors.DecodeError(
        errors.DECODE_ERROR,
        f'encoded {fmt} image claims {width}x{height} pixels but holds only {size} bytes; '
        'its header and data disagree, so it was not decoded')


def _open_header(data: bytes, max_pixels: int) -> Image.Image:
  declared = _declared_size(data)
  if declared is not None:
    _check_pixels(*declared, sniff_format(data) or 'image', max_pixels, len(data))
  with warnings.catch_warnings():
    warnings.simplefilter('error', Image.DecompressionBombWarning)
    try:
      image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
      raise errors.DecodeError(errors.TOO_MANY_PIXELS, str(e)) from e
    except Exception as e:  # Pillow's header parsers raise many kinds on hostile data
      raise errors.DecodeError(
          errors.DECODE_ERROR, f'encoded image header cannot be read ({e})') from e
  _check_pixels(*image.size, image.format or 'image', max_pixels, len(data))
  return image


def image_size(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tuple[int, int]:
  """(width, height) from the header alone."""
  return _open_header(data, max_pixels).size


_END_MARKERS = {'png': b'IEND', 'jpeg': b'\xff\xd9'}


def check_encoded(data: bytes, fmt: Optional[str] = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> Tuple[Tuple[int, ...], str]:
  """Checks an encoded image without decoding its pixels; returns (shape, dtype name).

  Reads the header (format, size, pixel limit) and, for PNG and JPEG, requires the end
  marker near the end of the data, which catches truncated files.
  """
  fmt = fmt or sniff_format(data)
  if fmt is None:
    raise errors.DecodeError(errors.DECODE_ERROR,
                             'bytes are not a PNG, JPEG, WebP, BMP, TIFF or GIF image')
  frame = _jpeg_frame(data) if fmt == 'jpeg' else None
  if frame is not None:
    height, width, layers = frame
    _check_pixels(width, height, 'JPEG', max_pixels, len(data))
    _check_end_marker(data, fmt)
    return ((height, width) if layers == 1 else (height, width, layers)), 'uint8'
  header = _open_header(data, max_pixels)
  _check_end_marker(data, fmt)
  width, height = header.size
  bands = len(header.getbands()) if header.mode != 'P' else 3
  shape = (height, width) if bands == 1 else (height, width, bands)
  sixteen = header.mode.startswith('I;16') or (fmt == 'png' and len(data) > 24 and
                                               data[24] == 16)
  return shape, 'uint16' if sixteen else 'float32' if header.mode == 'F' else 'uint8'


# Segments `_jpeg_frame` reads past: DHT, DRI, COM (Pillow skips or stores them).
_JPEG_SKIPPED = frozenset((0xC4, 0xDD, 0xFE))


def _jpeg_frame(data: bytes) -> Optional[Tuple[int, int, int]]:
  """(height, width, components) of an 8-bit, 1- or 3-component JPEG whose segments up to
  its first scan are all of the plainest kinds; None for anything else.

  What Pillow's header parser would find, without Pillow (docs/benchmarks.md).
  Only layouts on which Pillow cannot fail are accepted: SOI, then APP0 JFIF, DQT tables
  that fit their segment, DHT, DRI, COM and one baseline/extended/progressive frame
  (SOF0-2) before SOS, each segment inside the data. Any other marker, fill bytes, Exif,
  ICC or Adobe segments, another bit depth or component count go to Pillow, so what is
  accepted, rejected or reported stays Pillow's answer (tests/pixels/test_image_formats.py
  compares the two on damaged headers).

  The last header accepted is kept (`_last_header`): a JPEG that starts with the same
  bytes up to its first scan's length, and holds that scan's header, gets its answer by
  one comparison (the walk reads nothing else), as a dataset's JPEGs of one size from
  one encoder do.
  """
  global _last_header
  header, after, limit, frame = _last_header
  if (header and data.startswith(header) and len(data) >= after and
      limit == Image.MAX_IMAGE_PIXELS):
    return frame
  frame, header_size, after = _walk_jpeg_header(data)
  if frame is not None:
    _last_header = (data[:header_size], after, Image.MAX_IMAGE_PIXELS, frame)
  return frame


# The last JPEG header `_jpeg_frame` accepted: its bytes up to the first scan's length,
# where that scan's header ends, the pixel limit then, and the frame.
_last_header: Tuple[bytes, int, Optional[int], Optional[Tuple[int, int, int]]] = (
    b'', 0, None, None)


def _walk_jpeg_header(data: bytes) -> Tuple[Optional[Tuple[int, int, int]], int, int]:
  """`_jpeg_frame`'s answer by a walk of the segments, with the size of the bytes it
  read (up to the first scan's length) and the end of that scan's header; every check
  but `after > end` reads only those bytes, and the scan's `after` is the largest."""
  end, pos, frame = len(data), 2, None
  limit = Image.MAX_IMAGE_PIXELS
  while pos + 4 <= end:
    if data[pos] != 0xFF:
      return None, 0, 0
    marker = data[pos + 1]
    length = (data[pos + 2] << 8) | data[pos + 3]
    body, after = pos + 4, pos + 2 + length
    if length < 2 or after > end:
      return None, 0, 0
    if marker == 0xDA:  # start of scan: the header is over
      return frame, body, after
    if marker in (0xC0, 0xC1, 0xC2):
      if frame is not None or length < 8:
        return None, 0, 0
      bits, layers = data[body], data[body + 5]
      height = (data[body + 1] << 8) | data[body + 2]
      width = (data[body + 3] << 8) | data[body + 4]
      if (bits != 8 or layers not in (1, 3) or length != 8 + 3 * layers or
          not (width and height) or (limit is not None and width * height > limit)):
        return None, 0, 0
      frame = (height, width, layers)
    elif marker == 0xDB:
      table = body
      while table < after:
        table += 65 if data[table] < 16 else 129  # 8- or 16-bit entries, plus Pq/Tq
        if table > after:
          return None, 0, 0
    elif marker == 0xE0:
      if length < 16 or data[body:body + 5] != b'JFIF\0':
        return None, 0, 0
    elif marker not in _JPEG_SKIPPED:
      return None, 0, 0
    pos = after
  return None, 0, 0


def _check_end_marker(data: bytes, fmt: str) -> None:
  marker = _END_MARKERS.get(fmt)
  if marker is not None and marker not in data[-64:]:
    raise errors.DecodeError(
        errors.DECODE_ERROR, f'{fmt} image has no end marker: the data is truncated')


def decode_encoded(data: bytes, fmt: Optional[str] = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
  """Decodes an encoded image to HxW or HxWxC (RGB/RGBA order), keeping its bit depth.

  Raises only DecodeError: Pillow and OpenCV raise many kinds of exception on hostile
  data, and each of them means this image cannot be decoded.
  """
  try:
    return _decode_encoded(data, fmt, max_pixels)
  except errors.UnrecordError:
    raise
  except Exception as e:
    raise errors.DecodeError(errors.DECODE_ERROR,
                             f'image data cannot be decoded ({type(e).__name__}: {e})') from e


def _decode_encoded(data: bytes, fmt: Optional[str], max_pixels: int) -> np.ndarray:
  fmt = fmt or sniff_format(data)
  if fmt is None:
    raise errors.DecodeError(errors.DECODE_ERROR,
                             'bytes are not a PNG, JPEG, WebP, BMP, TIFF or GIF image')
  header = _open_header(data, max_pixels)
  width, height = header.size
  if fmt in _OPENCV_FORMATS:
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
      raise errors.DecodeError(errors.DECODE_ERROR,
                               f'{fmt} image data is damaged and cannot be decoded')
    pixels = _bgr_to_rgb(pixels)
  else:
    pixels = _decode_with_pillow(header, fmt)
  if pixels.shape[:2] != (height, width):
    raise errors.DecodeError(
        errors.DECODE_ERROR,
        f'{fmt} header says {width}x{height} but the data decodes to '
        f'{pixels.shape[1]}x{pixels.shape[0]}')
  return pixels


def _decode_with_pillow(image: Image.Image, fmt: str) -> np.ndarray:
  with warnings.catch_warnings():
    warnings.simplefilter('error', Image.DecompressionBombWarning)
    try:
      image.load()
      if image.mode in ('P', 'PA'):
        image = image.convert('RGBA' if 'transparency' in image.info or
                              image.mode == 'PA' else 'RGB')
      elif image.mode in ('1', 'CMYK', 'YCbCr', 'LAB', 'HSV'):
        image = image.convert('L' if image.mode == '1' else 'RGB')
      return np.asarray(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as e:
      raise errors.DecodeError(errors.DECODE_ERROR,
                               f'{fmt} image data is damaged ({e})') from e


def _bgr_to_rgb(pixels: np.ndarray) -> np.ndarray:
  if pixels.ndim == 3 and pixels.shape[2] == 3:
    return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
  if pixels.ndim == 3 and pixels.shape[2] == 4:
    return cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGBA)
  return pixels
