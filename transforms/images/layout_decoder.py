"""Records that repeat a known byte layout, decoded by slicing instead of parsing.

The records of a dataset come from one writer and mostly differ only in their values:
the pixels, a label, an id. `LayoutDecoder` decodes the first record of each length in
full (`decode.decode_record`) and keeps its `Layout`: the byte spans that hold the
pixels and the other features' values, and all other bytes (field tags, lengths, feature
names, and every feature `decode` reads for the shape or dtype). A later record of that
length whose other bytes are identical has, byte for byte, the same message structure,
so the same features, shape and dtype: its pixels and one-value features are read
straight from their spans. Any other record is decoded in full.

Its gain is in docs/benchmarks.md; a property test proves it equal to the full decode.
Only raw pixels and serialized tensors with a known key (`--image_key`, `--encoding raw`
or `tensor`, both settled by the export job) take this path: there no value can change
how a record is read. A tensor's header (its dtype, shape and content length) is fixed
bytes like the Example's own, and its `tensor_content` is the pixels' span.
"""

from __future__ import annotations

import struct
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

from transforms import errors
from transforms import progress
from transforms.images import decode
from transforms.inputs.tfrecord import Record, RecordRef
from transforms.pixels import image_formats
from transforms.pixels import normalize
from transforms.records import example as example_lib
from transforms.records import npy
from transforms.records import record_kinds
from transforms.records import tensor_proto
from transforms.records import wire

# Layouts kept per decoder; records of more lengths than this are decoded in full.
MAX_LAYOUTS = 64
# Layouts of encoded records tried per decoder (each image has its own length; a layout
# fits the records whose other bytes repeat, `EncodedLayout`).
MAX_ENCODED_LAYOUTS = 8
# A layout keeps its fixed bytes; records with more than this outside the values they
# vary in (a long number list, say) are decoded in full, so layouts stay small.
MAX_FIXED_BYTES = 64 << 10
# A packed int64 list of more bytes than this holds more than one value: not a scalar,
# and its bytes stay fixed (checking that they are valid varints would cost a parse).
_MAX_VARINT_BYTES = 10
_FLOAT = struct.Struct('<f')
_Span = example_lib.Span


class LayoutDecoder:
  """`decode.decode_record` for one spec, faster on records that repeat a layout.

  `in_place`: pixels read by layout stay views of the record even where their items sit
  misaligned, rather than aligned copies as the full decode makes them (the export's
  `normalize` reads them in place, and copies them only for the steps NumPy does).
  """

  def __init__(self, spec: decode.ImageSpec,
               decoder: decode.Decoder = decode.image_formats.decode_encoded,
               *, in_place: bool = False):
    self._spec = spec
    self._decoder = decoder
    self._in_place = in_place
    self._layouts: Dict[int, Optional[Layout]] = {}
    self._encoded: List[EncodedLayout] = []
    self._encoded_attempts = 0
    self._enabled = (spec.key is not None and spec.encoding in ('raw', 'tensor', 'encoded')
                     and spec.record in (None, record_kinds.EXAMPLE))

  def decode(self, ref: RecordRef, payload: bytes) -> List[decode.DecodedImage]:
    """What `decode.decode_record(ref, payload, spec, decoder)` returns or raises."""
    if not self._enabled or type(payload) is not bytes:
      return decode.decode_record(ref, payload, self._spec, self._decoder)
    if self._spec.encoding == 'encoded':
      return self._decode_encoded(ref, payload)
    size = len(payload)
    layout = self._layouts.get(size)
    if layout is not None:
      images = layout.decode(ref, payload, self._in_place)
      if images is not None:
        return images
    images = decode.decode_record(ref, payload, self._spec, self._decoder)
    if size not in self._layouts and len(self._layouts) < MAX_LAYOUTS:
      # Learned once per length: a record that fails to make a layout, or a later one
      # that does not match it, is decoded in full like any other.
      self._layouts[size] = Layout.learn(payload, images, self._spec)
    return images

  def _decode_encoded(self, ref: RecordRef, payload: bytes) -> List[decode.DecodedImage]:
    for layout in self._encoded:
      images = layout.decode(ref, payload)
      if images is not None:
        return images
    images = decode.decode_record(ref, payload, self._spec, self._decoder)
    if self._encoded_attempts < MAX_ENCODED_LAYOUTS:
      # A few tries in all: a record that matches none of the layouts costs a check of
      # each, and a dataset that yields none stops paying for the learning.
      self._encoded_attempts += 1
      layout = EncodedLayout.learn(payload, images, self._spec, self._decoder)
      if layout is not None:
        self._encoded.append(layout)
    return images


class KeysDecoder:
  """Several image keys of one record (a photo and its mask, the views of a rig): each
  key's images in key order. A record fails as a whole when any key fails."""

  def __init__(self, specs, decoder: decode.Decoder = decode.image_formats.decode_encoded,
               *, in_place: bool = False):
    self._decoders = [LayoutDecoder(spec, decoder, in_place=in_place) for spec in specs]

  def decode(self, ref: RecordRef, payload: bytes) -> List[decode.DecodedImage]:
    if len(self._decoders) == 1:
      return self._decoders[0].decode(ref, payload)
    images = []
    for decoder in self._decoders:
      images += decoder.decode(ref, payload)
    return images


class Layout:
  """A record's fixed bytes, and where its pixels and other values sit.

  `fixed`: (start, bytes) runs a record must repeat exactly. `scalars`: (name, kind,
  span) of the features whose values may vary; those holding one value join the
  `constant` ones (one-value features in fixed bytes) as the image's `features`, as
  `example.scalar_features` gives them.
  """

  __slots__ = ('fixed', 'pixels', 'scalars', 'constant', 'dtype_name', 'shape',
               'stored_axes', 'key', 'encoding')

  def __init__(self, fixed, pixels, scalars, constant, dtype_name, shape, stored_axes,
               key, encoding):
    self.fixed: Tuple[Tuple[int, bytes], ...] = fixed
    self.pixels: _Span = pixels
    self.scalars: Tuple[Tuple[str, str, _Span], ...] = scalars
    self.constant: Dict[str, example_lib.Scalar] = constant
    self.dtype_name: str = dtype_name
    self.shape: Tuple[int, ...] = shape
    self.stored_axes: str = stored_axes
    self.key: str = key
    self.encoding: str = encoding

  @classmethod
  def learn(cls, payload: bytes, images: List[decode.DecodedImage],
            spec: decode.ImageSpec) -> Optional['Layout']:
    """The layout of `payload`, which decoded in full to `images`; None when it has
    none this module can use (not the canonical encoding, a key with many values, or
    more than MAX_FIXED_BYTES of fixed bytes)."""
    if not images or images[0].pixels is None:
      return None
    try:
      features = example_lib.feature_spans(payload)
    except (wire.NotCanonical, ValueError, UnicodeDecodeError):  # ValueError: field count
      return None
    image = [(kind, spans) for name, kind, spans in features if name == spec.key]
    if not image or image[0][0] != example_lib.BYTES or len(image[0][1]) != 1:
      return None
    pixels = image[0][1][0]
    # The shape and dtype features stay fixed: they must not change under a layout.
    variable, scalars = _varying_values(
        features, decode.declaring_names(spec.key) | {spec.key})
    if spec.encoding == 'tensor':
      pixels = _tensor_content(payload, pixels)
    if pixels is None:
      return None
    variable.append(pixels)
    fixed = _fixed_runs(payload, variable)
    if fixed is None:
      return None
    first = images[0]
    return cls(tuple(fixed), pixels, tuple(scalars), _constant(first.features, scalars),
               first.source_dtype, first.stored_shape, first.stored_axes, spec.key,
               first.encoding)

  def decode(self, ref: RecordRef, payload: bytes, in_place: bool = False
             ) -> Optional[List[decode.DecodedImage]]:
    """The record's images, or None when it does not repeat this layout; `in_place`:
    misaligned pixels stay a view of `payload` (see `LayoutDecoder`)."""
    for start, run in self.fixed:
      if not payload.startswith(run, start):
        return None
    features = self.constant.copy()
    if not _read_scalars(payload, self.scalars, 0, features):
      return None
    start, end = self.pixels
    raw_dtype = decode.raw_dtype_of(self.dtype_name)
    pixels = np.frombuffer(payload, raw_dtype, (end - start) // raw_dtype.itemsize, start)
    if not in_place:
      pixels = normalize.aligned(pixels)
    pixels = pixels.reshape(self.shape)
    if self.dtype_name == 'bfloat16':
      pixels = tensor_proto.widen_bfloat16(pixels)
    parts, axes = decode.split_batch(pixels, self.stored_axes)
    return [
        decode.DecodedImage(ref=ref, n=n, pixels=part, axes=axes,
                            source_dtype=self.dtype_name, encoding=self.encoding,
                            key=self.key,
                            features=features, batch_size=len(parts),
                            stored_shape=self.shape, stored_axes=self.stored_axes)
        for n, part in enumerate(parts)]


def _varying_values(features, fixed_names) -> Tuple[List[_Span], List[Tuple[str, str, _Span]]]:
  """The spans of the values a layout lets vary (every feature's but `fixed_names`' and
  those of number lists too long to be one value, which stay fixed bytes), and
  (name, kind, span) of the one-value features among them."""
  variable, scalars = [], []
  for name, kind, spans in features:
    if name in fixed_names or not spans:
      continue
    if kind == example_lib.INT64 and spans[0][1] - spans[0][0] > _MAX_VARINT_BYTES:
      continue
    variable += spans
    if len(spans) == 1:
      scalars.append((name, kind, spans[0]))
  return variable, scalars


def _constant(features: Dict[str, example_lib.Scalar], scalars) -> Dict[str, example_lib.Scalar]:
  """The learned record's one-value features that sit in its fixed bytes."""
  varying = {name for name, _, _ in scalars}
  return {k: v for k, v in features.items() if k not in varying}


def _fixed_runs(payload: bytes, variable: List[_Span]
                ) -> Optional[List[Tuple[int, bytes]]]:
  """(start, bytes) of every run of `payload` outside the `variable` spans; None when
  they hold more than MAX_FIXED_BYTES, so layouts stay small."""
  fixed, position = [], 0
  for start, end in sorted(variable):
    if start > position:
      fixed.append((position, payload[position:start]))
    position = end
  if position < len(payload):
    fixed.append((position, payload[position:]))
  if sum(len(run) for _, run in fixed) > MAX_FIXED_BYTES:
    return None
  return fixed


def _read_scalars(payload: bytes, scalars: Tuple[Tuple[str, str, _Span], ...], offset: int,
                  features: Dict[str, example_lib.Scalar]) -> bool:
  """Adds the one-value features among `scalars` (spans `offset` bytes on) to
  `features`, as `example.scalar_features` reads them; False for a number list whose
  bytes are not whole varints, which protobuf's parser then judges."""
  for name, kind, (start, end) in scalars:
    start += offset
    end += offset
    if kind == example_lib.INT64:
      value = _one_varint(payload, start, end)
      if value is _INVALID:
        return False
      if value is not None:
        features[name] = value
    elif kind == example_lib.FLOAT:
      if end - start == 4:
        features[name] = _FLOAT.unpack_from(payload, start)[0]
    elif end - start <= example_lib.MAX_SCALAR_TEXT:
      try:
        features[name] = payload[start:end].decode('utf-8')
      except UnicodeDecodeError:
        pass
  return True


class EncodedLayout:
  """The layout of a record whose image is one encoded file (JPEG, PNG, ...) of any size.

  Its bytes are `head` (fixed runs, and the one-value features' spans, `head_scalars`),
  the image's value, and `tail` (the same, at offsets from the value's end). The five
  lengths that enclose the value (the Example's features, the map entry, the Feature,
  the BytesList, the value itself) are the value's size plus a constant each; they are
  the only other bytes that vary. A record whose fixed runs repeat and whose enclosing
  lengths are the shortest varints of its value's size plus those constants, each as
  wide as in the learned record (so every other byte sits where it sat there), has, byte
  for byte, the learned record's message structure, whatever its size; its value is
  then checked or decoded as the full decode does (`decode.encoded_part`).
  """

  __slots__ = ('head', 'lengths', 'sizes', 'value_start', 'tail_size', 'tail',
               'head_scalars', 'tail_scalars', 'constant', 'spec', 'decoder')

  def __init__(self, head, lengths, value_start, tail_size, tail, head_scalars,
               tail_scalars, constant, spec, decoder):
    self.head: Tuple[Tuple[int, bytes], ...] = head
    # (start, the value's size plus this, the varint's width in the learned record)
    self.lengths: Tuple[Tuple[int, int, int], ...] = lengths
    # The value sizes whose lengths have those widths: a record of another is no match.
    self.sizes = range(max(_varint_range(width).start - more for _, more, width in lengths),
                       min(_varint_range(width).stop - more for _, more, width in lengths))
    self.value_start: int = value_start
    self.tail_size: int = tail_size
    self.tail: Tuple[Tuple[int, bytes], ...] = tail
    self.head_scalars: Tuple[Tuple[str, str, _Span], ...] = head_scalars
    self.tail_scalars: Tuple[Tuple[str, str, _Span], ...] = tail_scalars
    self.constant: Dict[str, example_lib.Scalar] = constant
    self.spec: decode.ImageSpec = spec
    self.decoder: decode.Decoder = decoder

  @classmethod
  def learn(cls, payload: bytes, images: List[decode.DecodedImage],
            spec: decode.ImageSpec, decoder: decode.Decoder) -> Optional['EncodedLayout']:
    """The layout of `payload`, which decoded in full to `images`; None when it has
    none (several images, not the canonical encoding, too many fixed bytes)."""
    if len(images) != 1 or images[0].encoded is None:
      return None
    try:
      features = example_lib.feature_spans(payload)
      chain = _value_chain(payload, spec.key)
    except (wire.NotCanonical, ValueError, UnicodeDecodeError):  # ValueError: field count
      return None
    if chain is None:
      return None
    value_start, value_end = chain[-1]
    size = value_end - value_start
    variable, scalars = _varying_values(features, {spec.key})
    variable.append(chain[-1])
    lengths = []
    for start, end in chain:
      length = _varint_bytes(end - start)
      if payload[start - len(length):start] != length:
        return None  # not the shortest varint: protobuf's parser reads such records
      lengths.append((start - len(length), end - start - size, len(length)))
      variable.append((start - len(length), start))
    fixed = _fixed_runs(payload, variable)
    if fixed is None:
      return None
    constant = _constant(images[0].features, scalars)
    return cls(
        head=tuple(run for run in fixed if run[0] < value_start), lengths=tuple(lengths),
        value_start=value_start, tail_size=len(payload) - value_end,
        tail=tuple((start - value_end, run) for start, run in fixed if start >= value_end),
        head_scalars=tuple(s for s in scalars if s[2][0] < value_start),
        tail_scalars=tuple((name, kind, (start - value_end, end - value_end))
                           for name, kind, (start, end) in scalars if start >= value_end),
        constant=constant, spec=spec, decoder=decoder)

  def decode(self, ref: RecordRef, payload: bytes
             ) -> Optional[List[decode.DecodedImage]]:
    """The record's image, or None when it does not repeat this layout; raises what
    the full decode raises for its image."""
    value_end = len(payload) - self.tail_size
    size = value_end - self.value_start
    if size not in self.sizes:
      return None
    for start, run in self.head:
      if not payload.startswith(run, start):
        return None
    for start, more, _ in self.lengths:  # as wide as learned: `sizes` holds the size
      if not payload.startswith(_varint_bytes(size + more), start):
        return None
    for start, run in self.tail:
      if not payload.startswith(run, value_end + start):
        return None
    features = self.constant.copy()
    if not (_read_scalars(payload, self.head_scalars, 0, features) and
            _read_scalars(payload, self.tail_scalars, value_end, features)):
      return None
    value = payload[self.value_start:value_end]
    fmt = image_formats.sniff_format(value)
    if fmt is None:
      return None  # a tensor, say, under the key: the full decode says what it is
    spec = self.spec
    try:
      part = decode.encoded_part(value, fmt, spec, self.decoder)
    except errors.UnrecordError as e:
      raise e.at(ref.path, ref.index, ref.offset)
    return decode.images_of(ref, (part,), 'encoded', spec.key, features)


def _value_chain(payload: bytes, key: str) -> Optional[List[_Span]]:
  """The content spans that hold `key`'s one bytes value, from the Example's features
  down to the value itself; None when the key is not a bytes feature of one value."""
  name = key.encode('utf-8')
  (_, start, end), = wire.length_delimited(payload, 0, len(payload))
  for _, entry_start, entry_end in wire.length_delimited(payload, start, end):
    (_, key_start, key_end), (_, feature_start, feature_end) = wire.length_delimited(
        payload, entry_start, entry_end)
    if payload[key_start:key_end] != name:
      continue
    (kind, list_start, list_end), = wire.length_delimited(payload, feature_start,
                                                          feature_end)
    if kind != 1:
      return None
    (_, value_start, value_end), = wire.length_delimited(payload, list_start, list_end)
    return [(start, end), (entry_start, entry_end), (feature_start, feature_end),
            (list_start, list_end), (value_start, value_end)]
  return None


def _varint_range(width: int) -> range:
  """The values whose shortest varint is `width` bytes."""
  return range(0 if width == 1 else 1 << 7 * (width - 1), 1 << 7 * width)


def _varint_bytes(value: int) -> bytes:
  """The shortest varint of a non-negative `value`."""
  if value < 0x4000:  # the lengths around an image of up to 2 MB, spelled out
    return bytes((value,)) if value < 0x80 else bytes((value & 0x7F | 0x80, value >> 7))
  if value < 0x200000:
    return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14))
  out = bytearray()
  while value > 0x7F:
    out.append(value & 0x7F | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


# sniff_format reads this many bytes of a value to tell an encoded image: a tensor's
# content must start past them, so that what the full decode sniffs is fixed bytes.
_SNIFFED_BYTES = 12


def _tensor_content(payload: bytes, span: _Span) -> Optional[_Span]:
  """The span of `tensor_content` in the serialized TensorProto at `span`, the form the
  full decode reads in place; None for any other value (an npy array, an encoded image,
  typed value fields) or a header too short to hold the bytes sniff_format reads."""
  start, end = span
  value = memoryview(payload)[start:end]
  if image_formats.sniff_format(value) or npy.looks_like_npy(value):
    return None
  scanned = tensor_proto.scan_tensor(payload, start, end)
  if scanned is None or scanned[2] - start < _SNIFFED_BYTES:
    return None
  return scanned[2], scanned[3]


_INVALID = object()


def _one_varint(payload: bytes, start: int, end: int):
  """The value of a packed int64 list holding one varint; None for more than one;
  _INVALID for bytes that are not whole varints."""
  try:
    value, position = wire.varint(payload, start, end)
  except wire.NotCanonical:
    return _INVALID
  if position != end:
    try:
      while position < end:
        _, position = wire.varint(payload, position, end)
    except wire.NotCanonical:
      return _INVALID
    return None
  return wire.int64(value)


def decode_records(items: Iterable[Union[Record, errors.Failure]], records: KeysDecoder,
                   tally: progress.Tally
                   ) -> Iterator[Union[decode.DecodedImage, errors.Failure]]:
  """The images of each `(RecordRef, bytes)` record; a record that cannot be decoded
  becomes a dead-letter row with its bytes (stage `decode`), and rows among `items` pass
  through. Counts `images_decoded`."""
  images = 0
  try:
    for item in items:
      if isinstance(item, errors.Failure):
        yield item
        continue
      ref, payload = item
      try:
        decoded = records.decode(ref, payload)
      except errors.UnrecordError as e:
        yield tally.fail(e, 'decode', payload=payload)
        continue
      images += len(decoded)
      yield from decoded
  finally:  # counted once, not per record
    tally.add('images_decoded', images)
