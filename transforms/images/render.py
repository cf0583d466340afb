"""One decoded image -> its encoded bytes. Pure; no Beam, no I/O. (Its name is made
above, in transforms/output/naming.py.)

Passthrough: an image already encoded in the requested format, with no pixel change
asked for, is written as its original bytes (byte-identical, no generation loss).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple


from transforms.images import decode
from transforms.images import name_templates
from transforms.pixels import encode
from transforms.pixels import normalize


@dataclasses.dataclass(frozen=True)
class RenderConfig:
  """Everything that decides an image's name and bytes, resolved before the run."""
  encode: encode.EncodeSpec = encode.EncodeSpec()
  normalize: normalize.NormalizeSpec = normalize.NormalizeSpec()
  # The dataset's value range for `--value_range auto` (None: per type / per image),
  # and the ranges of further image keys that differ from it: (key, range) pairs.
  value_range: Optional[Tuple[float, float]] = None
  key_value_ranges: Tuple[Tuple[str, Optional[Tuple[float, float]]], ...] = ()
  name_template: str = name_templates.DEFAULT_TEMPLATE
  id_key: Optional[str] = None
  label_key: Optional[str] = None
  label_names: Optional[Tuple[str, ...]] = None
  reencode: bool = False
  max_pixels: int = decode.image_formats.DEFAULT_MAX_PIXELS
  # --portable_names: every name made safe on Windows and case-insensitive disks
  # (naming.portable_name).
  portable_names: bool = False

  def __post_init__(self):
    name_templates.template_fields(self.name_template)

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


def render(image: decode.DecodedImage, config: RenderConfig,
           decoder: decode.Decoder = decode.image_formats.decode_encoded) -> Rendered:
  """Encoded bytes for one image; raises DecodeError or EncodeError (with a reason code)."""
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
      image.pixels, image.axes, config.normalize, bits=bits,
      value_range=value_range, source_dtype=image.source_dtype)
  pixels = encode.fit_channels(result.pixels, config.encode)
  data = encode.encode(pixels, config.encode)
  encoder = (encode.png_encoder_for(pixels, config.encode)
             if config.encode.format == 'png' else
             'pillow' if config.encode.format == 'webp' else 'opencv')
  return Rendered(data, tuple(pixels.shape), normalize.dtype_name(pixels.dtype),
                  result.steps, encoder, False, result.value_range)


def describe_image(choice: dict) -> str:
  """One settled image in a line: `'image' encoded png uint8 [32, 32, 3] hwc, values
  0..255 (from dtype uint8) -> 8-bit, passed through`."""
  fmt = f' {choice["format"]}' if choice['format'] else ''
  values = (f'{choice["value_range"][0]}..{choice["value_range"][1]}'
            if choice['value_range'] else 'per image')
  named = normalize.range_name(choice['value_range'])
  # The range auto took from the sample, named: '[-1,1] data, from the sample'.
  source = (f'{named} data, from {choice["value_range_from"]}'
            if named and choice['value_range_from'].startswith('the sample')
            else f'from {choice["value_range_from"]}')
  return (f'{choice["key"]!r} {choice["encoding"]}{fmt} {choice["dtype"]} '
          f'{choice["shape"]} {choice["layout"]}, values {values} ({source}) -> '
          + ('float32' if choice['bit_depth'] == 'float' else f'{choice["bit_depth"]}-bit')
          + (', passed through' if choice['passthrough'] else '')
          + (f'; warning: {choice["suggested"]["warning"]}' if choice.get('suggested')
             else ''))
