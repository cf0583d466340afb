"""TFRecords -> image arrays, for every common way images are stored.

A record is a tf.train.Example, a SequenceExample, or itself a tensor or an encoded image
(`transforms.records.record_kinds`); each image is decoded from one feature.

Encodings of the image feature:
  tensor   a bytes feature holding `tf.io.serialize_tensor` output or `np.save` bytes
  raw      a bytes feature of raw pixels; shape/dtype from sibling features or options
  list     a float_list / int64_list of flattened pixels; shape found the same way
  encoded  PNG/JPEG/WebP/BMP/TIFF/GIF bytes (TFDS `image`, `image/encoded`)
A rank-4 array (or rank 3 with no channel axis, N x H x W) is a batch: one image each.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import re
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import numpy as np

from transforms import errors
from transforms.inputs.tfrecord import RecordRef
from transforms.pixels import image_formats
from transforms.pixels import isolation
from transforms.pixels import normalize
from transforms.records import example as example_lib
from transforms.records import npy
from transforms.records import record_kinds
from transforms.records import tensor_proto
from transforms.records.example import FeatureValue

ENCODINGS = ('tensor', 'raw', 'list', 'encoded')
AXES = ('auto', 'hwc', 'chw')
_CHANNEL_COUNTS = (1, 2, 3, 4)
_IMAGE_NAME_HINT = re.compile(r'(image|img|pixel|picture|photo|frame|^x$|^data$)', re.I)
_KEY_SUFFIXES = ('/raw', '/encoded', '/bytes', '/data', '/pixels', '/tensor', '_raw',
                 '_encoded', '_bytes')


@dataclasses.dataclass(frozen=True)
class ImageSpec:
  """How to find and decode the image in each record. Unset fields are detected."""
  key: Optional[str] = None
  encoding: Optional[str] = None
  # What each record is (record_kinds.KINDS); None detects it per record.
  record: Optional[str] = None
  shape: Optional[Tuple[int, ...]] = None
  dtype: Optional[str] = None
  axes: str = 'auto'  # axis order: --tensor_layout
  max_pixels: int = image_formats.DEFAULT_MAX_PIXELS
  # False: encoded images are only checked (header, size, end marker), not decoded;
  # `pixels` stays None until `ensure_pixels`. For passthrough, where pixels are unused.
  decode_encoded: bool = True
  # The function that decodes encoded images (MODULE:FUNCTION, same arguments as
  # image_formats.decode_encoded), and whether it runs in an isolated child process.
  decoder: str = isolation.DEFAULT_DECODER
  isolate_decoder: bool = False

  def __post_init__(self):
    if self.encoding is not None and self.encoding not in ENCODINGS:
      raise errors.ConfigError(
          f'encoding must be one of {", ".join(ENCODINGS)}, got {self.encoding!r}')
    if self.record is not None and self.record not in record_kinds.KINDS:
      raise errors.ConfigError(
          f'record kind must be one of {", ".join(record_kinds.KINDS)}, got {self.record!r}')
    if self.axes not in AXES:
      raise errors.ConfigError(
          f'tensor layout must be one of {", ".join(AXES)}, got {self.axes!r}')
    if self.dtype is not None:
      object.__setattr__(self, 'dtype', normalize_dtype_name(self.dtype))
    if self.shape is not None:
      shape = tuple(int(d) for d in self.shape)
      if not 2 <= len(shape) <= 4 or any(d <= 0 for d in shape):
        raise errors.ConfigError(f'shape must have 2 to 4 positive dimensions, got '
                                 f'{list(shape)}')
      object.__setattr__(self, 'shape', shape)
    if self.max_pixels <= 0:
      raise errors.ConfigError('max_pixels must be positive')


@dataclasses.dataclass(slots=True)
class DecodedImage:
  """One image and where it came from.

  `pixels` is HxW, HxWxC or CxHxW as `axes` says, in the stored dtype (bfloat16 is
  widened to float32; `source_dtype` keeps the original name). For encoded sources,
  `encoded` holds the original bytes so a writer can pass them through untouched, and
  `pixels` is None when the spec asked not to decode them (see `ensure_pixels`).

  A value: nothing changes one after it is made (`dataclasses.replace` makes a changed
  copy). It is not `frozen`, whose `__init__` sets each field through
  `object.__setattr__`, a cost small images feel (docs/benchmarks.md).
  """
  ref: RecordRef
  n: int
  pixels: Optional[np.ndarray]
  axes: str
  source_dtype: str
  encoding: str
  key: str
  features: Dict[str, example_lib.Scalar]
  encoded: Optional[bytes] = None
  encoded_format: Optional[str] = None
  batch_size: int = 1
  stored_shape: Tuple[int, ...] = ()
  stored_axes: str = ''


# ---------------------------------------------------------------------------------------
# dtypes and shapes from sibling features


def normalize_dtype_name(value) -> str:
  """'uint8', b'tf.uint8', 'DT_UINT8', 'np.float32', 4 (TF enum) -> 'uint8' etc."""
  if isinstance(value, (int, np.integer)):
    name = tensor_proto.dtype_name(int(value))
  else:
    if isinstance(value, bytes):
      value = value.decode('utf-8', 'replace')
    name = str(value).strip().lower()
    for prefix in ('tf.', 'np.', 'numpy.', 'torch.', 'dt_'):
      if name.startswith(prefix):
        name = name[len(prefix):]
    name = {'half': 'float16', 'float': 'float32', 'double': 'float64',
            'bfloat': 'bfloat16'}.get(name, name)
  if name not in tensor_proto.DTYPE_NAMES:
    raise errors.DecodeError(
        errors.UNSUPPORTED_DTYPE,
        f'dtype {value!r} is not supported; use one of {", ".join(tensor_proto.DTYPE_NAMES)}')
  return name


@functools.lru_cache(maxsize=256)
def _bases(key: str) -> Tuple[str, ...]:
  bases = [key]
  for suffix in _KEY_SUFFIXES:
    if key.endswith(suffix) and len(key) > len(suffix):
      bases.append(key[:-len(suffix)])
  return tuple(bases)


def _int_feature(features: Dict[str, FeatureValue], name: str) -> Optional[List[int]]:
  feature = features.get(name)
  if feature is None or not len(feature):
    return None
  if feature.kind == example_lib.INT64:
    return [int(v) for v in feature.values]
  if feature.kind == example_lib.FLOAT:
    if not np.isfinite(feature.values).all():
      return None  # like text with no number in it: no usable size here
    return [int(v) for v in feature.values]
  text = feature.values[0]
  try:
    return [int(v) for v in re.findall(rb'-?\d+', text)] or None
  except ValueError:
    return None


@functools.lru_cache(maxsize=256)
def _sibling_names(key: str, names: Tuple[str, ...]) -> Tuple[str, ...]:
  """`X/name`, `X_name` for each base X of `key`, then the unprefixed names; made once
  per key rather than per record."""
  candidates = []
  for base in _bases(key):
    for name in names:
      candidates += [f'{base}/{name}', f'{base}_{name}']
  candidates += list(names)
  return tuple(c for c in candidates if c != key)


def _sibling(features, key, names) -> Tuple[Optional[str], Optional[List[int]]]:
  """Looks up `X/name`, `X_name` then unprefixed `name` for each base X of `key`."""
  for candidate in _sibling_names(key, names):
    if candidate in features:
      values = _int_feature(features, candidate)
      if values is not None:
        return candidate, values
  return None, None


_SHAPE, _HEIGHT, _WIDTH, _CHANNELS = (
    ('shape',), ('height', 'rows'), ('width', 'cols'), ('channels', 'depth', 'num_channels'))


def declared_shape(features: Dict[str, FeatureValue], key: str
                   ) -> Tuple[Optional[Tuple[Optional[int], ...]], Optional[str]]:
  """The shape sibling features give for `key` (channels may be None), and its source."""
  name, shape = _sibling(features, key, _SHAPE)
  if shape is not None:
    return tuple(shape), name
  name_h, height = _sibling(features, key, _HEIGHT)
  name_w, width = _sibling(features, key, _WIDTH)
  if height is None or width is None:
    return None, None
  _, channels = _sibling(features, key, _CHANNELS)
  channel_count = channels[0] if channels else None
  return (height[0], width[0], channel_count), f'{name_h}+{name_w}'


def declared_dtype(features: Dict[str, FeatureValue], key: str) -> Optional[str]:
  for name in _dtype_names(key):
    if name in features:
      return _dtype_of_feature(features[name])
  return None


@functools.lru_cache(maxsize=256)
def _dtype_names(key: str) -> Tuple[str, ...]:
  names = [name for base in _bases(key)
           for name in (f'{base}/dtype', f'{base}_dtype', f'{base}/format_dtype')]
  return tuple(names + ['dtype'] if key != 'dtype' else names)


@functools.lru_cache(maxsize=256)
def declaring_names(key: str) -> FrozenSet[str]:
  """Every feature `declared_shape` or `declared_dtype` may read for `key`."""
  return frozenset(itertools.chain(
      *(_sibling_names(key, names) for names in (_SHAPE, _HEIGHT, _WIDTH, _CHANNELS)),
      _dtype_names(key)))


def _dtype_of_feature(feature: FeatureValue) -> Optional[str]:
  if not len(feature):
    return None
  value = feature.values[0]
  return normalize_dtype_name(int(value) if feature.kind == example_lib.INT64 else value)


def _complete_shape(shape: Optional[Tuple[Optional[int], ...]], count: int,
                    key: str) -> Tuple[int, ...]:
  """Fills in a missing channel count, or guesses a square 1- or 3-channel image."""
  if shape is None:
    for channels in (1, 3, 4):
      side = math.isqrt(count // channels) if count % channels == 0 else 0
      if side and side * side * channels == count:
        return (side, side) if channels == 1 else (side, side, channels)
    raise errors.DecodeError(
        errors.SHAPE_MISMATCH,
        f'feature {key!r} holds {count} values but the record gives no shape; add '
        f'{key}/shape or height/width features, or pass --shape')
  if len(shape) == 2 and shape[0] and shape[1] and count != shape[0] * shape[1]:
    shape = (shape[0], shape[1], None)  # H,W given: the channels follow from the count
  if shape[-1] is None:
    height, width = shape[0], shape[1]
    if height <= 0 or width <= 0 or count % (height * width):
      raise errors.DecodeError(
          errors.SHAPE_MISMATCH,
          f'feature {key!r} holds {count} values, not a multiple of height*width = '
          f'{height}*{width}')
    channels = count // (height * width)
    return (height, width) if channels == 1 else (height, width, channels)
  return tuple(int(d) for d in shape)


def _stated_shape(features: Dict[str, FeatureValue], key: str, spec: ImageSpec
                  ) -> Tuple[Optional[Tuple[Optional[int], ...]], str]:
  """The shape of `key`'s values and where it comes from: the record's own shape
  features, else --shape. A --shape that disagrees with what the record states is an
  error naming both (it is for records that do not say)."""
  declared, source = declared_shape(features, key)
  if declared is None:
    return spec.shape, '--shape'
  if spec.shape is None:
    return declared, source
  agrees = len(spec.shape) >= len([d for d in declared if d is not None]) and all(
      d is None or d == s for d, s in zip(declared, spec.shape)) and (
          len(spec.shape) == len(declared) or declared[-1] is None)
  if not agrees:
    raise errors.DecodeError(
        errors.SHAPE_MISMATCH,
        f'--shape {list(spec.shape)} disagrees with the shape the record states for '
        f'{key!r}: {[d for d in declared if d is not None]} (from {source}); drop '
        '--shape, which is for records that do not state one')
  return spec.shape, '--shape'


def _check_count(shape: Sequence[int], count: int, key: str, what: str,
                 source: str = '') -> None:
  expected = 1
  for d in shape:
    if d <= 0:
      raise errors.DecodeError(errors.SHAPE_MISMATCH,
                               f'shape {list(shape)} for {key!r} has a non-positive size')
    expected *= d
  if expected != count:
    raise errors.DecodeError(
        errors.SHAPE_MISMATCH,
        f'feature {key!r} holds {count} {what} but shape {list(shape)}'
        f'{f" (from {source})" if source else ""} needs {expected}')


# ---------------------------------------------------------------------------------------
# Layout


def detect_axes(shape: Sequence[int], requested: str = 'auto') -> str:
  """hw | hwc | chw | nhw | nhwc | nchw for an array shape.

  A trailing axis of 1-4 is channels (HWC wins ties such as 3x4x3); else a leading axis of
  1-4 is channels (CHW); a rank-3 array with neither is a batch of grayscale images (NHW).
  `requested` ('hwc' or 'chw') overrides the guess; for rank 4 it means NHWC or NCHW.
  """
  rank = len(shape)
  if rank == 2:
    return 'hw'
  if rank == 3:
    if requested != 'auto':
      return requested
    if shape[2] in _CHANNEL_COUNTS:
      return 'hwc'
    if shape[0] in _CHANNEL_COUNTS:
      return 'chw'
    return 'nhw'
  if rank == 4:
    if requested != 'auto':
      return 'n' + requested
    if shape[3] in _CHANNEL_COUNTS:
      return 'nhwc'
    if shape[1] in _CHANNEL_COUNTS:
      return 'nchw'
    raise errors.DecodeError(
        errors.SHAPE_MISMATCH,
        f'rank-4 shape {list(shape)} has no channel axis of size 1-4; pass '
        '--tensor_layout hwc or chw')
  raise errors.DecodeError(
      errors.SHAPE_MISMATCH, f'an image needs 2 to 4 dimensions, got shape {list(shape)}')


def split_batch(pixels: np.ndarray, axes: str) -> Tuple[List[np.ndarray], str]:
  """Images of a possibly batched array, and the axis order of each."""
  if axes.startswith('n'):
    return list(pixels), axes[1:]
  return [pixels], axes


# ---------------------------------------------------------------------------------------
# Finding the image feature


@dataclasses.dataclass(frozen=True)
class Candidate:
  key: str
  encoding: str
  size: int
  hinted: bool


def classify_feature(features: Dict[str, FeatureValue], key: str) -> Optional[str]:
  """The encoding `key` would decode with, or None when it does not look like an image."""
  feature = features[key]
  if not len(feature):
    return None
  if feature.kind == example_lib.BYTES:
    value = feature.buffers()[0]
    if image_formats.sniff_format(value):
      return 'encoded'
    if npy.looks_like_npy(value):
      return 'tensor'
    if len(value) >= 16 and tensor_proto.looks_like_tensor(value):
      return 'tensor'
    if len(value) >= 64 and (declared_shape(features, key)[0] is not None or
                             _IMAGE_NAME_HINT.search(key)):
      return 'raw'
    return None
  if len(feature) >= 16 and (declared_shape(features, key)[0] is not None or
                             _IMAGE_NAME_HINT.search(key)):
    return 'list'
  return None


def image_candidates(features: Dict[str, FeatureValue]) -> List[Candidate]:
  """Features that could be the image, best first (named like an image, then largest)."""
  found = []
  for key, feature in features.items():
    encoding = classify_feature(features, key)
    if encoding is None:
      continue
    if feature.kind == example_lib.BYTES:
      size = sum(len(v) for v in feature.buffers())
    else:
      size = len(feature) * 4
    found.append(Candidate(key, encoding, size, bool(_IMAGE_NAME_HINT.search(key))))
  return sorted(found, key=lambda c: (not c.hinted, -c.size, c.key))


def describe_features(features: Dict[str, FeatureValue]) -> str:
  return ', '.join(f'{name} ({f.kind}[{len(f)}])' for name, f in sorted(features.items())
                   ) or '(no features)'


def missing_image_error(features: Dict[str, FeatureValue],
                        key: Optional[str]) -> errors.DecodeError:
  candidates = image_candidates(features)
  likely = (f'; the likely image feature is {candidates[0].key!r} '
            f'({candidates[0].encoding})') if candidates else ''
  if key is None:
    what = 'no feature looks like an image'
  else:
    what = f'image feature {key!r} not found'
  return errors.DecodeError(
      errors.MISSING_FEATURE,
      f'{what}; this record has: {describe_features(features)}{likely}')


# ---------------------------------------------------------------------------------------
# Decoding


Decoder = Callable[..., np.ndarray]


def make_decoder(spec: ImageSpec):
  """The encoded-image decoder for `spec`: isolated in a child process, or direct.

  Either way it is called like image_formats.decode_encoded and released with close().
  """
  if spec.isolate_decoder:
    return isolation.IsolatedCall(spec.decoder)
  return isolation.DirectCall(spec.decoder)


def decode_features(ref: RecordRef, features: Dict[str, FeatureValue],
                    spec: ImageSpec,
                    decoder: Decoder = image_formats.decode_encoded) -> List[DecodedImage]:
  """Every image in one parsed record; raises DecodeError with a reason code.

  `decoder` decodes encoded images (see ImageSpec.decoder / isolation.IsolatedCall).
  """
  key = spec.key
  if key is None:
    candidates = image_candidates(features)
    if not candidates:
      raise missing_image_error(features, None)
    key = candidates[0].key
  feature = features.get(key)
  if feature is None or not len(feature):
    raise missing_image_error(features, key)
  encoding = spec.encoding or classify_feature(features, key) or (
      'list' if feature.kind != example_lib.BYTES else 'raw')
  scalars = example_lib.scalar_features(features, exclude=(key,))

  images: List[_Part] = []
  if encoding in ('encoded', 'tensor'):
    _require_kind(feature, key, example_lib.BYTES, encoding)
    # Each value is checked by its magic bytes, so a dataset mixing serialized tensors
    # and encoded images under one key decodes either way.
    for value in feature.buffers():
      fmt = image_formats.sniff_format(value)
      if fmt is None and encoding == 'tensor' and npy.looks_like_npy(value):
        parsed_header = npy.header(value)
        _check_pixels(parsed_header[0], spec, key)
        pixels = npy.to_array(value, _max_elements(spec), parsed_header)
        images += _split(pixels, spec, normalize.dtype_name(pixels.dtype))
        continue
      if fmt is None and encoding == 'tensor':
        tensor = tensor_proto.parse_tensor_proto(value)
        _check_pixels(tensor_proto.tensor_shape(tensor), spec, key)
        pixels = tensor_proto.tensor_to_array(tensor, max_elements=_max_elements(spec))
        images += _split(pixels, spec, tensor_proto.dtype_name(tensor.dtype))
        continue
      if fmt is None:
        raise errors.DecodeError(
            errors.DECODE_ERROR, f'feature {key!r} holds bytes that are not a PNG, JPEG, '
            'WebP, BMP, TIFF or GIF image')
      images.append(encoded_part(value, fmt, spec, decoder))
  elif encoding == 'raw':
    _require_kind(feature, key, example_lib.BYTES, encoding)
    pixels, dtype_name = _decode_raw(features, key, spec)
    images += _split(pixels, spec, dtype_name)
  else:
    if feature.kind == example_lib.BYTES:
      raise errors.DecodeError(
          errors.DECODE_ERROR, f'feature {key!r} is a bytes feature; encoding "list" needs '
          'a float_list or int64_list')
    pixels, dtype_name = _decode_list(features, key, spec)
    images += _split(pixels, spec, dtype_name)

  return images_of(ref, images, encoding, key, scalars)


def encoded_part(value, fmt: str, spec: ImageSpec, decoder: Decoder) -> '_Part':
  """One encoded image of format `fmt` (sniffed): decoded, or for passthrough
  (`spec.decode_encoded` False) only checked, its bytes kept either way."""
  value = bytes(value)  # kept with the image: written through, hashed, or decoded
  if spec.decode_encoded:
    pixels = decoder(value, fmt, spec.max_pixels)
    shape, dtype_name = pixels.shape, normalize.dtype_name(pixels.dtype)
  else:
    pixels = None
    shape, dtype_name = image_formats.check_encoded(value, fmt, spec.max_pixels)
  axes = 'hw' if len(shape) == 2 else 'hwc'
  return _Part(pixels, axes, dtype_name, shape, axes, value, fmt)


def images_of(ref: RecordRef, parts: Sequence['_Part'], encoding: str, key: str,
              features: Dict[str, example_lib.Scalar]) -> List[DecodedImage]:
  """The DecodedImages of one record's parts, numbered as a batch."""
  return [
      DecodedImage(ref=ref, n=n, pixels=part.pixels, axes=part.axes,
                   source_dtype=part.dtype_name, encoding=encoding, key=key,
                   features=features, encoded=part.encoded, encoded_format=part.fmt,
                   batch_size=len(parts), stored_shape=tuple(part.stored_shape),
                   stored_axes=part.stored_axes)
      for n, part in enumerate(parts)
  ]


def ensure_pixels(image: DecodedImage, max_pixels: int,
                  decoder: Decoder = image_formats.decode_encoded) -> DecodedImage:
  """`image` with its pixels decoded (a no-op when they already are)."""
  if image.pixels is not None:
    return image
  pixels = decoder(image.encoded, image.encoded_format, max_pixels)
  return dataclasses.replace(image, pixels=pixels,
                             source_dtype=normalize.dtype_name(pixels.dtype),
                             axes='hw' if pixels.ndim == 2 else 'hwc')


def decode_record(ref: RecordRef, payload: bytes, spec: ImageSpec,
                  decoder: Decoder = image_formats.decode_encoded) -> List[DecodedImage]:
  """Parses one record and decodes its images; errors carry the record."""
  try:
    return decode_parsed(ref, record_kinds.parse(payload, spec.record), spec, decoder)
  except errors.UnrecordError as e:
    raise e.at(ref.path, ref.index, ref.offset)


def decode_parsed(ref: RecordRef, parsed: record_kinds.Parsed, spec: ImageSpec,
                  decoder: Decoder = image_formats.decode_encoded) -> List[DecodedImage]:
  """Every image of one parsed record. A feature list gives an image per step, numbered
  across the steps like the images of a batch."""
  if record_kinds.is_bare(parsed.kind):
    # A bare record among Examples is its own image, whatever key the run settled.
    encoding = 'tensor' if parsed.kind == record_kinds.TENSOR else 'encoded'
    if (spec.key, spec.encoding) != (record_kinds.RECORD_KEY, encoding):
      spec = dataclasses.replace(spec, key=record_kinds.RECORD_KEY, encoding=encoding)
  elif spec.key == record_kinds.RECORD_KEY:
    spec = dataclasses.replace(spec, key=None, encoding=None)  # an Example among them
  if not parsed.feature_lists:
    return decode_features(ref, parsed.features, spec, decoder)
  key = spec.key
  if key is None:
    candidates = image_candidates(parsed.first_step())
    if not candidates:
      raise missing_image_error(parsed.first_step(), None)
    key = candidates[0].key
  if key not in parsed.feature_lists:
    return decode_features(ref, parsed.features, dataclasses.replace(spec, key=key),
                           decoder)
  spec = dataclasses.replace(spec, key=key)
  images = []
  for step in parsed.steps(key):
    images += decode_features(ref, step, spec, decoder)
  return [dataclasses.replace(image, n=n, batch_size=len(images))
          for n, image in enumerate(images)]


def _require_kind(feature: FeatureValue, key: str, kind: str, encoding: str) -> None:
  if feature.kind != kind:
    raise errors.DecodeError(
        errors.DECODE_ERROR,
        f'feature {key!r} is a {feature.kind} feature; encoding {encoding!r} needs {kind}')


def _max_elements(spec: ImageSpec) -> int:
  return spec.max_pixels * 4 * 64  # a batch of up to 64 full-size RGBA images


def _check_pixels(shape: Sequence[int], spec: ImageSpec, key: str) -> None:
  if len(shape) < 2:
    return
  axes = detect_axes(shape, spec.axes) if 2 <= len(shape) <= 4 else 'hw'
  dims = dict(zip(axes, shape)) if len(axes) == len(shape) else {}
  pixels = dims.get('h', 1) * dims.get('w', 1)
  if pixels > spec.max_pixels:
    raise errors.DecodeError(
        errors.TOO_MANY_PIXELS,
        f'feature {key!r} has images of {dims.get("h")}x{dims.get("w")} = {pixels} pixels, '
        f'more than --max_pixels={spec.max_pixels}')


@dataclasses.dataclass(frozen=True)
class _Part:
  """One image of a record before it becomes a DecodedImage."""
  pixels: np.ndarray
  axes: str
  dtype_name: str
  stored_shape: Tuple[int, ...]
  stored_axes: str
  encoded: Optional[bytes] = None
  fmt: Optional[str] = None


def _split(pixels: np.ndarray, spec: ImageSpec, dtype_name: str) -> List[_Part]:
  axes = detect_axes(pixels.shape, spec.axes)
  parts, each_axes = split_batch(pixels, axes)
  return [_Part(p, each_axes, dtype_name, pixels.shape, axes) for p in parts]


def _decode_raw(features, key, spec):
  views = features[key].buffers()
  data = views[0] if len(views) == 1 else b''.join(views)
  dtype_name = spec.dtype or declared_dtype(features, key)
  shape, source = _stated_shape(features, key, spec)
  if dtype_name is None:
    dtype_name = _guess_raw_dtype(shape, len(data))
  raw_dtype = raw_dtype_of(dtype_name)
  if len(data) % raw_dtype.itemsize:
    raise errors.DecodeError(
        errors.SHAPE_MISMATCH,
        f'feature {key!r} holds {len(data)} bytes, not a whole number of {dtype_name} '
        f'values')
  count = len(data) // raw_dtype.itemsize
  shape = _complete_shape(shape, count, key)
  _check_count(shape, count, key, f'{dtype_name} values', source)
  _check_pixels(shape, spec, key)
  pixels = normalize.aligned(np.frombuffer(data, dtype=raw_dtype)).reshape(shape)
  if dtype_name == 'bfloat16':
    pixels = tensor_proto.widen_bfloat16(pixels)
  return pixels, dtype_name


@functools.lru_cache(maxsize=None)
def raw_dtype_of(dtype_name: str) -> np.dtype:
  """How raw bytes of `dtype_name` are stored: little-endian, bfloat16 as its bits."""
  return np.dtype('<u2') if dtype_name == 'bfloat16' else np.dtype(dtype_name).newbyteorder('<')


def _guess_raw_dtype(shape, nbytes: int) -> str:
  """uint8 unless the byte count says otherwise (2 -> uint16, 4 -> float32, 8 -> float64)."""
  if shape is None or shape[-1] is None:
    return 'uint8'
  count = 1
  for d in shape:
    count *= max(int(d), 1)
  itemsize = nbytes // count if count and nbytes % count == 0 else 1
  return {1: 'uint8', 2: 'uint16', 4: 'float32', 8: 'float64'}.get(itemsize, 'uint8')


def _decode_list(features, key, spec):
  feature = features[key]
  values = feature.values
  shape, source = _stated_shape(features, key, spec)
  shape = _complete_shape(shape, len(values), key)
  _check_count(shape, len(values), key, 'values', source)
  _check_pixels(shape, spec, key)
  dtype_name = spec.dtype or declared_dtype(features, key)
  pixels = np.asarray(values).reshape(shape)
  if dtype_name not in (None, 'bfloat16', normalize.dtype_name(pixels.dtype)):
    target = np.dtype(dtype_name)
    if target.kind in 'iu':
      info = np.iinfo(target)
      if pixels.size and (pixels.min() < info.min or pixels.max() > info.max):
        raise errors.DecodeError(
            errors.UNSUPPORTED_DTYPE,
            f'feature {key!r} declares dtype {dtype_name} but holds values '
            f'{pixels.min()}..{pixels.max()} outside its range')
    pixels = pixels.astype(target)
  return pixels, normalize.dtype_name(pixels.dtype)
