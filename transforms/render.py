"""One decoded image -> its encoded bytes (names: naming.Namer). Pure; no Beam, no I/O.

Passthrough: an image already encoded in the requested format, with no pixel change
asked for, is written as its original bytes (byte-identical, no generation loss).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np

from transforms import decode
from transforms import encode
from transforms import naming
from transforms import normalize
from transforms import schema


@dataclasses.dataclass(frozen=True)
class RenderConfig:
  """Everything that decides an image's name and bytes, resolved before the run."""
  encode: encode.EncodeSpec = encode.EncodeSpec()
  normalize: normalize.NormalizeSpec = normalize.NormalizeSpec()
  # The dataset's value range for `--value_range auto` (None: per type / per image),
  # and the ranges of further image keys that differ from it: (key, range) pairs.
  value_range: Optional[Tuple[float, float]] = None
  key_value_ranges: Tuple[Tuple[str, Optional[Tuple[float, float]]], ...] = ()
  name_template: str = naming.DEFAULT_TEMPLATE
  id_key: Optional[str] = None
  label_key: Optional[str] = None
  label_names: Optional[Tuple[str, ...]] = None
  reencode: bool = False
  max_pixels: int = decode.image_formats.DEFAULT_MAX_PIXELS

  def __post_init__(self):
    naming.template_fields(self.name_template)

  def value_range_for(self, key: str) -> Optional[Tuple[float, float]]:
    for other, value_range in self.key_value_ranges:
      if other == key:
        return value_range
    return self.value_range


@dataclasses.dataclass(slots=True)
class Rendered:
  """One image's encoded bytes and how they were made. A value, not `frozen` for the
  cost of a frozen `__init__` (see `decode.DecodedImage`)."""
  data: bytes
  shape: Tuple[int, ...]
  dtype: str
  steps: Tuple[str, ...]
  encoder: str
  passthrough: bool
  value_range: Optional[Tuple[float, float]]


def source_bits(dtype_name: str) -> str:
  return {'uint8': '8', 'uint16': '16'}.get(dtype_name, '')


def can_pass_through(image: decode.DecodedImage, config: RenderConfig) -> bool:
  """True when writing the original encoded bytes gives exactly the requested file."""
  return image.encoded is not None and passes_through(image.encoded_format,
                                                      image.source_dtype, config)


def passes_through(encoded_format: Optional[str], source_dtype: str,
                   config: RenderConfig) -> bool:
  """True when an image encoded as `encoded_format` is written as its own bytes: it is
  in the output format and no pixel change is asked for."""
  spec = config.normalize
  return (not config.reencode and encoded_format == config.encode.format
          and spec.mean is None and spec.channel_order == 'rgb'
          and spec.value_range == 'auto'
          and spec.bit_depth in ('auto', source_bits(source_dtype)))


def value_ranges(spec: normalize.NormalizeSpec, found: schema.Schema
                 ) -> Tuple[Optional[Tuple[float, float]], tuple]:
  """RenderConfig's `value_range` (the first image key's) and `key_value_ranges` (the
  further keys whose range differs from it)."""
  ranges = [dataset_value_range(spec, image) for image in found.images]
  return ranges[0], tuple((image.key, value_range) for image, value_range in
                          zip(found.more_images, ranges[1:]) if value_range != ranges[0])


def render(image: decode.DecodedImage, config: RenderConfig,
           decoder: decode.Decoder = decode.image_formats.decode_encoded) -> Rendered:
  """Encoded bytes for one image; raises an UnrecordError with a reason code (DecodeError, EncodeError)."""
  if can_pass_through(image, config):
    shape = tuple(image.pixels.shape) if image.pixels is not None else image.stored_shape
    return Rendered(image.encoded, shape, image.source_dtype, ('passthrough',),
                    'passthrough', True, None)
  image = decode.ensure_pixels(image, config.max_pixels, decoder)
  value_range = (config.value_range_for(image.key) if config.key_value_ranges
                 else config.value_range)
  bits = normalize.target_bits(
      normalize.dtype_name(image.pixels.dtype), config.normalize.bit_depth,
      config.encode.holds_16bit, config.encode.holds_float, value_range)
  result = normalize.normalize(
      image.pixels, image.layout, config.normalize, bits=bits,
      value_range=value_range, source_dtype=image.source_dtype)
  pixels = encode.fit_channels(result.pixels, config.encode)
  data = encode.encode(pixels, config.encode)
  encoder = (encode.png_encoder_for(pixels, config.encode)
             if config.encode.format == 'png' else
             'pillow' if config.encode.format == 'webp' else 'opencv')
  return Rendered(data, tuple(pixels.shape), normalize.dtype_name(pixels.dtype),
                  result.steps, encoder, False, result.value_range)


def settled_choices(found: schema.Schema, config: RenderConfig, layout: str = 'flat'
                    ) -> dict:
  """What the launch settled for the data, in the words a user checks before looking at
  any image: the launch line, `_report.json`/`.html` and `inspect` show it."""
  spec = config.normalize
  images = []
  for image in found.images:
    value_range = config.value_range_for(image.key)
    if spec.value_range == 'minmax':
      shown, source = None, 'each image\'s own min..max (--value_range minmax)'
    elif value_range is not None:
      shown = [normalize.plain_number(v) for v in value_range]
      source = ('--value_range' if spec.value_range != 'auto' else
                'the sample, after --mean/--std' if spec.mean is not None else 'the sample')
    else:
      shown, source = list(normalize.type_range(image.dtype) or ()), f'dtype {image.dtype}'
    images.append({
        'key': image.key, 'encoding': image.encoding, 'format': image.format,
        'dtype': image.dtype, 'shape': image.shape, 'layout': image.layout,
        'value_range': shown, 'value_range_from': source,
        'bit_depth': normalize.target_bits(
            image.dtype, spec.bit_depth, config.encode.holds_16bit,
            config.encode.holds_float, value_range),
        'passthrough': passes_through(image.format, image.dtype, config),
    })
  return {'record': found.record, 'images': images, 'format': config.encode.format,
          'layout': layout, 'name_template': config.name_template, 'label_key': config.label_key,
          'id_key': config.id_key,
          'label_names': len(config.label_names) if config.label_names else None}


def describe_image(choice: dict) -> str:
  """One settled image in a line: `'image' encoded png uint8 [32, 32, 3] hwc, values
  0..255 (from dtype uint8) -> 8-bit, passed through`."""
  fmt = f' {choice["format"]}' if choice['format'] else ''
  values = (f'{choice["value_range"][0]}..{choice["value_range"][1]}'
            if choice['value_range'] else 'per image')
  return (f'{choice["key"]!r} {choice["encoding"]}{fmt} {choice["dtype"]} '
          f'{choice["shape"]} {choice["layout"]}, values {values} (from '
          f'{choice["value_range_from"]}) -> '
          + ('float32' if choice['bit_depth'] == 'float' else f'{choice["bit_depth"]}-bit')
          + (', passed through' if choice['passthrough'] else ''))


def _unnormalized_extent(spec: normalize.NormalizeSpec, image: schema.ImageInfo
                         ) -> Tuple[float, float]:
  """The sample's min..max after `value * std + mean`, each channel with its own numbers
  (normalize undoes them after BGR becomes RGB, so the channels are taken in RGB order)."""
  mean, std = np.asarray(spec.mean, float), np.asarray(spec.std, float)
  channels = image.channel_ranges
  if channels is None or (mean.size == 1 and std.size == 1):
    low, high = image.value_range
    ends = np.concatenate([np.atleast_1d(low * std + mean), np.atleast_1d(high * std + mean)])
    return float(ends.min()), float(ends.max())
  channels = [list(c) for c in channels]
  if spec.channel_order == 'bgr' and len(channels) >= 3:
    channels[0], channels[2] = channels[2], channels[0]
  ends = []
  for c, (low, high) in enumerate(channels):
    m = mean[c] if mean.size > 1 and c < mean.size else mean.flat[0]
    s = std[c] if std.size > 1 and c < std.size else std.flat[0]
    ends += [low * s + m, high * s + m]
  return float(min(ends)), float(max(ends))


def dataset_value_range(spec: normalize.NormalizeSpec, image: schema.ImageInfo
                        ) -> Optional[Tuple[float, float]]:
  """Resolves `--value_range` once for the whole dataset from the sampled extent.

  auto: None for uint8/int8/uint16/bool (their type range is meant); otherwise the range
  `normalize.detect_range` picks for the sampled min..max (after undoing mean/std).
  minmax: None (each image is stretched over its own min..max). LO,HI: as given.
  """
  if spec.value_range == 'minmax':
    return None
  if spec.value_range != 'auto':
    return normalize.parse_value_range(spec.value_range)
  if image.dtype in ('uint8', 'int8', 'uint16', 'bool') and spec.mean is None:
    return None
  low, high = image.value_range
  if spec.mean is not None:
    low, high = _unnormalized_extent(spec, image)
  kind = np.float64 if 'float' in image.dtype or spec.mean is not None else np.int64
  return normalize.detect_range(np.asarray([low, high], dtype=kind))
