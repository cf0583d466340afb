"""Image arrays of any dtype, range and axis order -> the pixels an image file should hold.

NumPy and OpenCV, no I/O. The steps, in order: to HWC; BGR -> RGB; non-finite policy;
undo mean/std; map the value range onto the target bit depth, rounding to nearest and
clipping.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Dict, List, Optional, Protocol, Sequence, Tuple

import cv2
import numpy as np

from transforms import errors

BIT_DEPTHS = ('auto', '8', '16', 'float')
CHANNEL_ORDERS = ('rgb', 'bgr')
NON_FINITE_POLICIES = ('fail', 'clip')

# Named mean/std presets, in the value scale the normalization was applied in.
PRESETS: Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    'imagenet_255': ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    'clip': ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    'half': ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

_RANGE_SLACK = 1e-3
_INTEGER_RANGES = {
    'uint8': (0, 255), 'int8': (-128, 127), 'uint16': (0, 65535), 'bool': (0, 1),
}


def plain_number(value):
  """A float as JSON shows it best: 255.0 -> 255, 0.5 stays 0.5."""
  value = float(value)
  return int(value) if value.is_integer() else value


def type_range(dtype_name: str) -> Optional[Tuple[int, int]]:
  """The range a type's own values mean (uint8, int8, uint16, bool), else None."""
  return _INTEGER_RANGES.get(dtype_name)


def parse_value_range(text: str) -> Optional[Tuple[float, float]]:
  """'0,1' -> (0.0, 1.0); 'auto' -> None; 'minmax' -> ('minmax'); validates LO,HI."""
  text = text.strip().lower()
  if text in ('auto', 'minmax'):
    return None
  try:
    low, high = (float(v) for v in text.split(','))
  except ValueError:
    raise errors.ConfigError(
        f'value range must be auto, minmax or LO,HI (e.g. 0,1), got {text!r}') from None
  if not high > low:
    raise errors.ConfigError(f'value range {text!r}: HI must be greater than LO')
  return low, high


def parse_mean_std(text: Optional[str]) -> Optional[Tuple[float, ...]]:
  if text is None or text == '':
    return None
  try:
    return tuple(float(v) for v in text.split(','))
  except ValueError:
    close = difflib.get_close_matches(text.strip().lower(), PRESETS, n=1, cutoff=0.6)
    raise errors.ConfigError(
        f'--mean/--std takes numbers (one, or one per channel, comma-separated) or a '
        f'preset ({", ".join(sorted(PRESETS))}), got {text!r}' +
        (f'; did you mean {close[0]}?' if close else '')) from None


@dataclasses.dataclass(frozen=True)
class NormalizeSpec:
  """How tensor values map to pixels. See docs/export.md, "Normalization", for each field."""
  value_range: str = 'auto'
  mean: Optional[Tuple[float, ...]] = None
  std: Optional[Tuple[float, ...]] = None
  channel_order: str = 'rgb'
  bit_depth: str = 'auto'
  non_finite: str = 'fail'

  def __post_init__(self):
    if self.value_range not in ('auto', 'minmax'):
      parse_value_range(self.value_range)
    if self.channel_order not in CHANNEL_ORDERS:
      raise errors.ConfigError(f'channel order must be rgb or bgr, got '
                               f'{self.channel_order!r}')
    if self.bit_depth not in BIT_DEPTHS:
      raise errors.ConfigError(
          f'bit depth must be one of {", ".join(BIT_DEPTHS)}, got {self.bit_depth!r}')
    if self.non_finite not in NON_FINITE_POLICIES:
      raise errors.ConfigError(
          f'non-finite policy must be fail or clip, got {self.non_finite!r}')
    if (self.mean is None) != (self.std is None):
      raise errors.ConfigError('--mean and --std go together')
    if self.std is not None and any(s == 0 for s in self.std):
      raise errors.ConfigError('--std values must be non-zero')

  @property
  def undoes_mean_std(self) -> bool:
    return self.mean is not None


def preset(name: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
  if name not in PRESETS:
    raise errors.ConfigError(
        f'unknown mean/std preset {name!r}; known: {", ".join(sorted(PRESETS))}')
  return PRESETS[name]


def to_hwc(pixels: np.ndarray, axes: str) -> np.ndarray:
  """HxW stays; CxHxW -> HxWxC; HxWx1 -> HxW (a single-channel image)."""
  if axes == 'chw':
    pixels = np.moveaxis(pixels, 0, -1)
  elif axes not in ('hw', 'hwc'):
    raise errors.DecodeError(errors.SHAPE_MISMATCH, f'unexpected image axes {axes!r}')
  if pixels.ndim == 3 and pixels.shape[2] == 1:
    pixels = pixels[:, :, 0]
  if pixels.ndim == 3 and pixels.shape[2] > 4:
    raise errors.DecodeError(
        errors.SHAPE_MISMATCH,
        f'image has {pixels.shape[2]} channels; image files hold 1 to 4 (pass '
        '--tensor_layout if the channel axis was guessed wrong)')
  return pixels


_DTYPE_NAMES: Dict[np.dtype, str] = {}


def dtype_name(dtype: np.dtype) -> str:
  """`dtype.name`, remembered: NumPy builds that string anew on every access."""
  name = _DTYPE_NAMES.get(dtype)
  if name is None:
    name = _DTYPE_NAMES[dtype] = dtype.name
  return name


def detect_range(values: np.ndarray, dtype_name: Optional[str] = None
                 ) -> Tuple[float, float]:
  """The value range an array's values were meant in.

  uint8/int8/uint16/bool: their type range. Floats: [0,1], [-1,1] or [0,255] when the data
  fits, else its own min..max. Other integers: [0,255] or [0,65535] when the data fits,
  else min..max.
  """
  name = dtype_name or values.dtype.name
  if name in _INTEGER_RANGES:
    return _INTEGER_RANGES[name]
  seen = value_extent(values)
  if seen is None:
    return (0.0, 1.0)
  low, high = seen
  if values.dtype.kind == 'f':
    for candidate in ((0.0, 1.0), (-1.0, 1.0), (0.0, 255.0)):
      # A hair outside (float error after undoing a normalization) still counts.
      slack = (candidate[1] - candidate[0]) * _RANGE_SLACK
      if low >= candidate[0] - slack and high <= candidate[1] + slack:
        return candidate
  else:
    for candidate in ((0, 255), (0, 65535)):
      if low >= candidate[0] and high <= candidate[1]:
        return candidate
  if high == low:
    return (low, low + 1.0)
  return (low, high)


def merge_ranges(ranges: Sequence[Tuple[float, float]]) -> Tuple[float, float]:
  return min(r[0] for r in ranges), max(r[1] for r in ranges)


def target_bits(pixels_dtype: str, bit_depth: str, holds_16bit: bool,
                holds_float: bool,
                value_range: Optional[Tuple[float, float]] = None) -> str:
  """'8', '16' or 'float': what the written file will hold.

  auto: 16 for uint16 data, and for other integer data whose range is 0..65535, where the
  format holds 16 bits; else 8.
  """
  if bit_depth == 'float':
    if not holds_float:
      raise errors.ConfigError('--bit_depth float needs --format tiff')
    return 'float'
  if bit_depth == '16':
    if not holds_16bit:
      raise errors.ConfigError('--bit_depth 16 needs --format png or tiff')
    return '16'
  if bit_depth == '8':
    return '8'
  sixteen = pixels_dtype == 'uint16' or (
      pixels_dtype in ('int16', 'int32', 'int64', 'uint32', 'uint64') and
      value_range is not None and tuple(value_range) == (0, 65535))
  return '16' if sixteen and holds_16bit else '8'


@dataclasses.dataclass(slots=True)
class Normalized:
  """A value, not `frozen` for the cost of a frozen `__init__` (see
  `decode.DecodedImage`)."""
  pixels: np.ndarray
  value_range: Optional[Tuple[float, float]]
  steps: Tuple[str, ...]


def normalize(pixels: np.ndarray, axes: str, spec: NormalizeSpec, *, bits: str,
              value_range: Optional[Tuple[float, float]] = None,
              source_dtype: Optional[str] = None) -> Normalized:
  """Pixels ready to encode: HxW or HxWxC in RGB(A) order, uint8/uint16/float32.

  `value_range` is the range resolved for the whole dataset (see `resolve_range`); when
  None it is taken from `spec.value_range`, or detected on this image.

  `pixels` may be a view whose items sit misaligned (the export's layout path leaves
  them in the record): the float -> 8-bit path reads them in place with OpenCV, and
  every step NumPy does gets an aligned copy first (`aligned`).
  """
  steps = []
  pixels = to_hwc(pixels, axes)
  if axes == 'chw':
    steps.append('chw_to_hwc')
  if spec.channel_order == 'bgr' and pixels.ndim == 3 and pixels.shape[2] >= 3:
    pixels = pixels[..., [2, 1, 0] + list(range(3, pixels.shape[2]))]
    steps.append('bgr_to_rgb')
  if pixels.dtype == np.bool_:
    pixels = pixels.astype(np.uint8)
    source_dtype = 'bool'

  extent = None
  if pixels.dtype.kind == 'f':
    extent = _float_extent(pixels)
    if extent is None:
      pixels = aligned(pixels)
      extent = value_extent(pixels, finite_only=False) or (0.0, 0.0)
    if not (math.isfinite(extent[0]) and math.isfinite(extent[1])):
      if spec.non_finite == 'fail':
        bad = int(pixels.size - np.count_nonzero(np.isfinite(aligned(pixels))))
        raise errors.DecodeError(
            errors.NON_FINITE,
            f'image holds {bad} NaN/Inf values (pass --non_finite clip to map NaN to the '
            'low end and +/-Inf to the ends of the range)')
      steps.append('non_finite_clipped')
  if not (bits == '8' and extent is not None and value_range is not None and
          not spec.undoes_mean_std):
    pixels = aligned(pixels)  # past the one path OpenCV reads in place

  if spec.undoes_mean_std:
    pixels = _undo_mean_std(pixels, spec.mean, spec.std)
    extent = None
    steps.append('undo_mean_std')

  if bits == 'float':
    with np.errstate(over='ignore'):
      as_float32 = np.ascontiguousarray(pixels, dtype=np.float32)
    if pixels.dtype.kind == 'f' and not np.array_equal(
        np.isfinite(as_float32), np.isfinite(pixels)):
      raise errors.DecodeError(
          errors.NON_FINITE, 'values exceed the float32 range a float TIFF holds')
    return Normalized(as_float32, None, tuple(steps + ['float32']))

  top = 255 if bits == '8' else 65535
  target = np.uint8 if bits == '8' else np.uint16
  if (pixels.dtype == np.uint8 and bits == '8' and value_range in (None, (0, 255))
      and spec.value_range in ('auto', '0,255')):
    return Normalized(pixels, (0, 255), tuple(steps))
  if (pixels.dtype == np.uint16 and bits == '16' and value_range in (None, (0, 65535))
      and spec.value_range in ('auto', '0,65535')):
    return Normalized(pixels, (0, 65535), tuple(steps))

  if value_range is None:
    value_range = resolve_range(spec.value_range, pixels, source_dtype)
  low, high = float(value_range[0]), float(value_range[1])
  out = None
  if bits == '8' and extent is not None:
    out = _map_range_to_uint8(pixels, low, high, extent)
  if out is None:
    out = _map_range(aligned(pixels), low, high, top).astype(target)
  steps.append(f'range_{_fmt(low)}_{_fmt(high)}_to_{bits}bit')
  return Normalized(out, (low, high), tuple(steps))


def aligned(array: np.ndarray) -> np.ndarray:
  """`array`, copied when its items are not aligned in memory (a view at an odd offset of
  a record): NumPy reduces misaligned floats slower, up to 20x with the record in cache
  (docs/benchmarks.md), so the copy costs less than one reduction saves."""
  return array if array.flags.aligned else array.copy()


_OPENCV_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _float_extent(pixels: np.ndarray) -> Optional[Tuple[float, float]]:
  """`value_extent(pixels, finite_only=False)` of C-contiguous float32/float64 pixels
  at any alignment, read in place by OpenCV; None for other arrays.

  `minMaxLoc` passes over NaN, so a NaN is told by the L1 norm instead: a sum of
  absolute values, NaN exactly when one of them is (no sum of them is Inf - Inf); an Inf
  shows in the extent itself. A test compares it with `value_extent`.
  """
  if (pixels.dtype not in _OPENCV_FLOATS or not pixels.flags.c_contiguous or
      pixels.ndim not in (2, 3) or not 0 < pixels.size < 2 ** 31):
    return None
  plane = pixels.reshape(pixels.shape[0], -1)
  if math.isnan(cv2.norm(plane, cv2.NORM_L1)):
    return math.nan, math.nan
  low, high, _, _ = cv2.minMaxLoc(plane)
  return low, high


def value_extent(values: np.ndarray, *, finite_only: bool = True
                 ) -> Optional[Tuple[float, float]]:
  """(min, max) of `values`; None when there is none to take.

  finite_only: NaN and +/-Inf are left out (None when no value is finite). Otherwise a
  NaN anywhere shows in both and an Inf at its end, so both are finite exactly when
  every value is. Either way the common case costs two reductions.
  """
  if values.size == 0:
    return None
  with np.errstate(invalid='ignore'):
    low, high = float(values.min()), float(values.max())
  if not finite_only or (math.isfinite(low) and math.isfinite(high)):
    return low, high
  finite = values[np.isfinite(values)]
  if not finite.size:
    return None
  return float(finite.min()), float(finite.max())


# The unit roundoff of float32: one float32 operation changes a value by at most this
# fraction of it.
_FLOAT32_ROUNDOFF = 2.0 ** -24


def _map_range_to_uint8(pixels: np.ndarray, low: float, high: float,
                        extent: Tuple[float, float]) -> Optional[np.ndarray]:
  """`_map_range` to uint8, bit-identical, for float32/float64 pixels inside [low, high];
  None for other input.

  OpenCV's `convertScaleAbs` scales and rounds in one pass, in float32, so its value
  for an element lies within `error` = u * (4 M + 3 |shift| + 768) of the exact one,
  where u = 2^-24 and M bounds |x * scale| (a rounding of at most u for each operation
  and for each float32 constant). It runs twice, shifted down and up by 3 * error.
  Where both give the same integer, the exact value lies strictly between two values
  that round to that integer and at least 2 * error from any half-step k + 0.5, so the
  float64 expression rounds to it too. The elements where they differ (those within
  about 5e-4 of a half-step: about one in a thousand arbitrary floats, none of values
  quantized from 8-bit pixels) are computed again in float64, the same way `_map_range`
  does. Two passes writing uint8 instead of six over a float64 copy.
  """
  smallest, largest = extent
  if (pixels.dtype not in (np.float32, np.float64) or pixels.size == 0 or
      not low <= smallest <= largest <= high or not high > low):
    return None
  scale = 255.0 / (high - low)
  shift = -low * scale
  error = _FLOAT32_ROUNDOFF * (4 * max(abs(low), abs(high)) * scale + 3 * abs(shift) + 768)
  if not error < 1e-3:  # float32 too coarse for this range (huge or inf offsets)
    return None
  margin = 3 * error
  below = cv2.convertScaleAbs(pixels, alpha=scale, beta=shift - margin)
  above = cv2.convertScaleAbs(pixels, alpha=scale, beta=shift + margin)
  # One pass that allocates nothing tells whether any element differs (most images:
  # none); only then are they found.
  if cv2.norm(below, above, cv2.NORM_INF):
    unsure = np.flatnonzero(below != above)
    values = pixels.reshape(-1)[unsure].astype(np.float64)
    below.reshape(-1)[unsure] = _scale_and_round(values, low, high, 255)
  return below


def _scale_and_round(scaled: np.ndarray, low: float, high: float, top: int) -> np.ndarray:
  """rint((scaled - low) / (high - low) * top) in place on a float64 array, skipping the
  steps that cannot change a value (subtracting 0, dividing by 1)."""
  if low != 0:
    np.subtract(scaled, low, out=scaled)
  if high - low != 1:
    np.divide(scaled, high - low, out=scaled)
  np.multiply(scaled, top, out=scaled)
  return np.rint(scaled, out=scaled)


def _map_range(pixels: np.ndarray, low: float, high: float, top: int) -> np.ndarray:
  """round((pixels - low) / (high - low) * top), NaN -> 0, +/-Inf -> ends, clipped to 0..top.

  One float64 scratch array, updated in place. Steps that cannot change a value are
  skipped: subtracting 0, dividing by 1, and mapping non-finite values and clipping when
  the rounded result already lies in 0..top (two reductions tell). Every step that runs,
  runs in the same order, so the result is bit-identical to the plain expression.
  """
  scaled = pixels.astype(np.float64)
  with np.errstate(over='ignore', invalid='ignore'):  # inf/NaN are mapped just below
    _scale_and_round(scaled, low, high, top)
    smallest, largest = scaled.min(), scaled.max()  # NaN anywhere shows in both
  if not (np.isfinite(smallest) and np.isfinite(largest) and smallest >= 0 and
          largest <= top):
    # rint maps NaN and +/-Inf to themselves and the replacements are integers, so
    # doing this after rint equals doing it before.
    np.nan_to_num(scaled, copy=False, nan=0.0, posinf=top, neginf=0.0)
    np.clip(scaled, 0, top, out=scaled)
  return scaled


def resolve_range(value_range: str, pixels: np.ndarray,
                  source_dtype: Optional[str] = None) -> Tuple[float, float]:
  """A concrete (low, high) for a `--value_range` setting over the given values."""
  if value_range == 'auto':
    return detect_range(pixels, source_dtype)
  if value_range == 'minmax':
    low, high = value_extent(pixels) or (0, 1)
    return (low, high) if high > low else (low, low + 1.0)
  return parse_value_range(value_range)


def _undo_mean_std(pixels: np.ndarray, mean, std) -> np.ndarray:
  channels = pixels.shape[2] if pixels.ndim == 3 else 1
  mean_array = np.asarray(mean, dtype=np.float64)
  std_array = np.asarray(std, dtype=np.float64)
  for name, array in (('mean', mean_array), ('std', std_array)):
    if array.size not in (1, channels):
      raise errors.DecodeError(
          errors.SHAPE_MISMATCH,
          f'--{name} has {array.size} values but the image has {channels} channels')
  return pixels.astype(np.float64) * std_array + mean_array


def _fmt(value: float) -> str:
  return f'{value:g}'


def to_display(pixels: np.ndarray, axes: str,
               value_range: Optional[Tuple[float, float]] = None) -> np.ndarray:
  """An 8-bit RGB(A) or gray rendering for previews (contact sheets, reports)."""
  spec = NormalizeSpec(non_finite='clip')
  return normalize(pixels, axes, spec, bits='8', value_range=value_range).pixels


# ---------------------------------------------------------------------------------------
# The dataset's value range, resolved once at launch from the sampled records


class SampledImage(Protocol):
  """What the launch's sample shows of one image key: its dtype and its values' min..max,
  overall and per channel (the schema's `ImageInfo` is one; this package sits below it)."""
  key: str
  dtype: str
  value_range: Sequence[float]
  channel_ranges: Optional[Sequence[Sequence[float]]]


def value_ranges(spec: NormalizeSpec, images: Sequence[SampledImage]
                 ) -> Tuple[Optional[Tuple[float, float]], tuple]:
  """RenderConfig's `value_range` (the first image key's) and `key_value_ranges` (the
  further keys whose range differs from it), for the sample's image keys in order."""
  ranges = [dataset_value_range(spec, image) for image in images]
  return ranges[0], tuple((image.key, value_range) for image, value_range in
                          zip(images[1:], ranges[1:]) if value_range != ranges[0])


def _unnormalized_extent(spec: NormalizeSpec, image: SampledImage
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


def dataset_value_range(spec: NormalizeSpec, image: SampledImage
                        ) -> Optional[Tuple[float, float]]:
  """Resolves `--value_range` once for the whole dataset from the sampled extent.

  auto: None for uint8/int8/uint16/bool (their type range is meant); otherwise the range
  `detect_range` picks for the sampled min..max (after undoing mean/std).
  minmax: None (each image is stretched over its own min..max). LO,HI: as given.
  """
  if spec.value_range == 'minmax':
    return None
  if spec.value_range != 'auto':
    return parse_value_range(spec.value_range)
  if image.dtype in ('uint8', 'int8', 'uint16', 'bool') and spec.mean is None:
    return None
  low, high = image.value_range
  if spec.mean is not None:
    low, high = _unnormalized_extent(spec, image)
  kind = np.float64 if 'float' in image.dtype or spec.mean is not None else np.int64
  return detect_range(np.asarray([low, high], dtype=kind))


# ---------------------------------------------------------------------------------------
# What the sampled values look like: the common normalizations, and the flags that read
# each right (`unrecord inspect`, the launch line, and a warning when auto would not)

# The ranges --value_range auto takes by itself when the sample fits them (detect_range).
STANDARD_RANGES = ((0.0, 1.0), (-1.0, 1.0), (0.0, 255.0), (0.0, 65535.0))
# A mean/std signature is only claimed when the sample reaches this share of the
# preset's lowest value (a photo has near-black pixels), not for any data inside its box.
_SIGNATURE_REACH = 0.75
# Float data in 0..65535 is taken for 16-bit only past this value (12-bit data and depth
# maps in millimetres stay within it, and their own min..max is the safer reading).
_FLOAT_16BIT_ABOVE = 4095.0
_PRESET_WORDS = {'imagenet': 'ImageNet', 'imagenet_255': 'ImageNet (0..255)',
                 'clip': 'CLIP', 'half': 'mean 0.5 / std 0.5'}


@dataclasses.dataclass(frozen=True)
class Signature:
  """A recognized normalization: its `name`, the export `flags` that read it right, and
  whether --value_range auto already does (`auto`)."""
  name: str
  flags: Tuple[str, ...]
  auto: bool
  expected: Tuple[float, float]  # the range such data spans


def range_name(value_range: Optional[Sequence[float]]) -> Optional[str]:
  """'[0,1]', '[-1,1]', '[0,255]' or '[0,65535]' for those ranges, else None."""
  if value_range is None:
    return None
  for low, high in STANDARD_RANGES:
    if (float(value_range[0]), float(value_range[1])) == (low, high):
      return f'[{plain_number(low)},{plain_number(high)}]'
  return None


def _range_flag(value_range: Tuple[float, float]) -> Tuple[str, ...]:
  return (f'--value_range={plain_number(value_range[0])},{plain_number(value_range[1])}',)


def preset_extent(name: str) -> List[Tuple[float, float]]:
  """Per channel, the range a preset's normalization gives full-range pixels:
  (0 - mean) / std .. (top - mean) / std, top 255 for the `_255` presets, else 1."""
  mean, std = PRESETS[name]
  top = 255.0 if name.endswith('_255') else 1.0
  return [((0.0 - m) / s, (top - m) / s) for m, s in zip(mean, std)]


def value_signature(image: SampledImage) -> Optional[Signature]:
  """The common normalization the sample's values show, from their min..max (and each
  channel's): a standard range auto takes (`[0,1]`, `[-1,1]`, `[0,255]`, and 0..65535 for
  integer types), float data that is 16-bit (`--value_range=0,65535`), or a mean/std
  preset (`--mean imagenet`): every channel inside that preset's `preset_extent` and the
  lowest value at least 3/4 of the way to its lowest end. None when nothing fits."""
  low, high = (float(v) for v in image.value_range)
  if image.dtype in _INTEGER_RANGES:
    own = _INTEGER_RANGES[image.dtype]
    return Signature(range_name(own) or f'{own[0]}..{own[1]}', (), True, own)
  taken = detect_range(np.asarray([low, high], dtype=np.float64 if 'float' in image.dtype
                                  else np.int64))
  name = range_name(taken)
  if name is not None:
    return Signature(name, _range_flag(taken), True, tuple(taken))
  if 'float' in image.dtype and 0 <= low and _FLOAT_16BIT_ABOVE < high <= 65535 * (
      1 + _RANGE_SLACK):
    return Signature('[0,65535]', _range_flag((0.0, 65535.0)), False, (0.0, 65535.0))
  best = None
  channels = image.channel_ranges
  for preset_name in PRESETS:
    box = preset_extent(preset_name)
    box_low, box_high = min(b[0] for b in box), max(b[1] for b in box)
    if range_name((round(box_low, 9), round(box_high, 9))):
      continue  # 'half' is [-1,1]: auto takes it
    tolerance = (box_high - box_low) * 2 * _RANGE_SLACK
    if channels is not None and len(channels) == len(box):
      pairs = list(zip(channels, box))
    else:
      pairs = [((low, high), (box_low, box_high))]
    fits = all(c[0] >= b[0] - tolerance and c[1] <= b[1] + tolerance for c, b in pairs)
    if not fits or low > _SIGNATURE_REACH * box_low:
      continue
    distance = sum(abs(c[0] - b[0]) + abs(c[1] - b[1]) for c, b in pairs)
    if best is None or distance < best[0] - 1e-9:
      best = (distance, preset_name, (box_low, box_high))
  if best is None:
    return None
  _, preset_name, expected = best
  return Signature(f'{_PRESET_WORDS.get(preset_name, preset_name)} mean/std',
                   ('--mean', preset_name), False, expected)


def suggestion(spec: NormalizeSpec, image: SampledImage) -> Optional[dict]:
  """What to pass when the sample carries a signature that the settings given would read
  wrong (auto range, no --mean): {'looks_like', 'flags', 'warning'}; else None."""
  if spec.value_range != 'auto' or spec.mean is not None:
    return None
  found = value_signature(image)
  if found is None or found.auto:
    return None
  flags = ' '.join(found.flags)
  low, high = (plain_number(round(float(v), 4)) for v in image.value_range)
  undo = (f'pass {flags} (it sets --std too) to undo it' if found.flags[0] == '--mean'
          else f'pass {flags}')
  return {'looks_like': found.name, 'flags': list(found.flags),
          'warning': f'{image.key!r} values {low}..{high} look like {found.name} data '
                     f'({plain_number(round(found.expected[0], 4))}..'
                     f'{plain_number(round(found.expected[1], 4))}); they are stretched '
                     f'over the sample\'s min..max as they are: {undo}'}
