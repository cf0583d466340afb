"""tf.train.Example and SequenceExample -> plain Python/NumPy feature values, without
TensorFlow."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from google.protobuf import message as protobuf_message

from transforms import errors
from transforms.pixels import normalize
from transforms.records import protos
from transforms.records import wire

BYTES, INT64, FLOAT = 'bytes', 'int64', 'float'
Scalar = Union[int, float, str]
MAX_SCALAR_TEXT = 4096  # longer bytes values are blobs, not ids or names


class FeatureValue:
  """One feature: its kind and its values (a list of bytes, or a 1-D NumPy array).

  A bytes_list read in place from a large record (`_scan_example`) holds views of the
  record: `buffers()` lends them without a copy, for the paths that only read the bytes
  (a tensor or raw pixels, `transforms.images.decode`); `values` copies them out as bytes on
  first use. A 600 KB tensor is then copied at most once: into an aligned array, when its
  items sit misaligned, where NumPy reads them slowly (`normalize.aligned`).
  """

  __slots__ = ('kind', '_values', '_views')

  def __init__(self, kind: str, values: Union[List[bytes], np.ndarray, None] = None, *,
               views: Optional[List[memoryview]] = None):
    self.kind = kind
    self._values = values
    self._views = views

  @property
  def values(self) -> Union[List[bytes], np.ndarray]:
    if self._values is None:
      self._values = [bytes(view) for view in self._views]
    return self._values

  def buffers(self) -> Sequence[Union[bytes, memoryview]]:
    """The values of a bytes feature, as views of the record when it was read in place."""
    return self.values if self._views is None else self._views

  def __len__(self) -> int:
    return len(self.buffers())

  def __eq__(self, other) -> bool:
    if not isinstance(other, FeatureValue):
      return NotImplemented
    return (self.kind, self.values) == (other.kind, other.values)

  __hash__ = None

  def __repr__(self) -> str:
    return f'FeatureValue({self.kind!r}, {self.values!r})'


def parse_example(payload: bytes) -> Dict[str, FeatureValue]:
  """Parses a serialized tf.train.Example; raises DecodeError(proto_parse).

  Large records are read straight from their wire bytes (`_scan_example`), which leaves
  bytes values in place (`FeatureValue.buffers`), where protobuf's parser copies them
  twice (the parse, then the value).
  Anything the scan does not recognise as the canonical encoding goes to protobuf.
  """
  if len(payload) >= wire.SCAN_MIN_BYTES:
    features = _scan_example(payload)
    if features is not None:
      return features
  return _parse_with_protobuf(payload)


def _parse_with_protobuf(payload: bytes) -> Dict[str, FeatureValue]:
  try:
    example = protos.Example.FromString(payload)
  except (protobuf_message.DecodeError, ValueError) as e:
    raise errors.DecodeError(
        errors.PROTO_PARSE, f'record is not a serialized tf.train.Example ({e})') from e
  return {name: _feature_value(feature)
          for name, feature in example.features.feature.items()}


def parse_sequence_example(payload: bytes
                           ) -> Tuple[Dict[str, FeatureValue], Dict[str, List[FeatureValue]]]:
  """A serialized tf.train.SequenceExample: (context features, feature lists, each a
  list of one Feature per step); raises DecodeError(proto_parse)."""
  try:
    sequence = protos.SequenceExample.FromString(payload)
  except (protobuf_message.DecodeError, ValueError) as e:
    raise errors.DecodeError(
        errors.PROTO_PARSE,
        f'record is not a serialized tf.train.SequenceExample ({e})') from e
  context = {name: _feature_value(feature)
             for name, feature in sequence.context.feature.items()}
  lists = {name: [_feature_value(feature) for feature in feature_list.feature]
           for name, feature_list in sequence.feature_lists.feature_list.items()}
  return context, lists


def _feature_value(feature) -> FeatureValue:
  kind = feature.WhichOneof('kind')
  if kind == 'bytes_list':
    return FeatureValue(BYTES, list(feature.bytes_list.value))
  if kind == 'int64_list':
    return FeatureValue(INT64, np.array(feature.int64_list.value, dtype=np.int64))
  if kind == 'float_list':
    return FeatureValue(FLOAT, _packed_floats(feature.float_list))
  return FeatureValue(BYTES, [])


def _scan_example(payload: bytes) -> Optional[Dict[str, FeatureValue]]:
  """`parse_example`'s result read from the wire bytes, or None when they are anything
  but the canonical encoding (`feature_spans`), which protobuf's parser then handles with
  its own rules."""
  try:
    return {name: _scanned_value(payload, kind, spans)
            for name, kind, spans in feature_spans(payload)}
  except (wire.NotCanonical, ValueError, UnicodeDecodeError):  # ValueError: count of fields
    return None


Span = Tuple[int, int]


def feature_spans(payload: bytes) -> List[Tuple[str, Optional[str], Tuple[Span, ...]]]:
  """(name, kind, value spans) of each feature of a serialized Example, in record order:
  a span per bytes value, one for a packed number list; kind None for an empty Feature.

  Reads only the canonical encoding and raises wire.NotCanonical (or ValueError, for a
  wrong count of fields, or UnicodeDecodeError, for a name) on anything else: unknown or
  repeated fields, a name twice, unpacked numbers, ...
  Example{features=1: Features{feature=1: repeated MapEntry{key=1, value=2: Feature}}};
  Feature is one of bytes_list=1 {value=1: repeated bytes}, float_list=2 {value=1:
  packed float}, int64_list=3 {value=1: packed varint}.
  """
  top = list(wire.length_delimited(payload, 0, len(payload)))
  if not top:
    return []
  (field, start, end), = top
  if field != 1:
    raise wire.NotCanonical
  features, names = [], set()
  for field, entry_start, entry_end in wire.length_delimited(payload, start, end):
    if field != 1:
      raise wire.NotCanonical
    (key_field, key_start, key_end), (value_field, value_start, value_end) = (
        wire.length_delimited(payload, entry_start, entry_end))
    if key_field != 1 or value_field != 2:
      raise wire.NotCanonical
    name = payload[key_start:key_end].decode('utf-8')
    if name in names:
      raise wire.NotCanonical
    names.add(name)
    features.append((name, *_value_spans(payload, value_start, value_end)))
  return features


def _value_spans(payload: bytes, start: int, end: int
                 ) -> Tuple[Optional[str], Tuple[Span, ...]]:
  if start == end:
    return None, ()
  (kind, list_start, list_end), = wire.length_delimited(payload, start, end)
  if kind == 1:
    spans = []
    for field, value_start, value_end in wire.length_delimited(payload, list_start,
                                                                list_end):
      if field != 1:
        raise wire.NotCanonical
      spans.append((value_start, value_end))
    return BYTES, tuple(spans)
  if kind not in (2, 3):
    raise wire.NotCanonical
  kind = FLOAT if kind == 2 else INT64
  if list_start == list_end:
    return kind, ()
  (field, packed_start, packed_end), = wire.length_delimited(payload, list_start, list_end)
  if field != 1 or (kind == FLOAT and (packed_end - packed_start) % 4):
    raise wire.NotCanonical
  return kind, ((packed_start, packed_end),)


# Longer packed int64 lists (images stored as numbers) are left to protobuf's parser.
_SCAN_MAX_INT64_BYTES = 256


def _scanned_value(payload: bytes, kind: Optional[str], spans: Tuple[Span, ...]
                   ) -> FeatureValue:
  if kind is None:
    return FeatureValue(BYTES, [])
  if kind == BYTES:
    record = memoryview(payload)
    return FeatureValue(BYTES, views=[record[start:end] for start, end in spans])
  if not spans:
    return FeatureValue(kind, np.zeros(0, np.float32 if kind == FLOAT else np.int64))
  (start, end), = spans
  if kind == FLOAT:
    return FeatureValue(FLOAT, np.frombuffer(payload[start:end], '<f4'))
  if end - start > _SCAN_MAX_INT64_BYTES:
    raise wire.NotCanonical  # a long list: protobuf's C parser is much faster
  values = []
  position = start
  while position < end:
    value, position = wire.varint(payload, position, end)
    values.append(wire.int64(value))
  return FeatureValue(INT64, np.array(values, dtype=np.int64))


def _packed_floats(float_list) -> np.ndarray:
  """The values of a FloatList as float32, straight from their packed wire bytes."""
  data = float_list.SerializeToString()  # tag | varint length | float32s, or b''
  try:
    packed = list(wire.length_delimited(data, 0, len(data)))
  except wire.NotCanonical:  # unknown fields of other wire types, kept by protobuf
    packed = None
  if packed == []:
    return np.zeros(0, dtype=np.float32)
  if packed is None or len(packed) != 1 or packed[0][0] != 1:
    return np.array(float_list.value, dtype=np.float32)
  _, start, end = packed[0]
  # The floats follow a tag and a varint length, so the view is misaligned (slow to reduce).
  return normalize.aligned(
      np.frombuffer(data, dtype='<f4', count=(end - start) // 4, offset=start))


def scalar_value(feature: FeatureValue) -> Union[Scalar, None]:
  """The single value of a one-value feature as int/float/str, else None."""
  if len(feature) != 1:
    return None
  value = feature.values[0]
  if feature.kind == BYTES:
    if len(value) > MAX_SCALAR_TEXT:
      return None
    try:
      return value.decode('utf-8')
    except UnicodeDecodeError:
      return None
  if feature.kind == INT64:
    return int(value)
  return float(value)


def scalar_features(features: Dict[str, FeatureValue], exclude=()) -> Dict[str, Scalar]:
  """Every one-value feature (ids, labels, file names, ...) as plain Python values."""
  scalars = {}
  for name, feature in features.items():
    if name in exclude:
      continue
    value = scalar_value(feature)
    if value is not None:
      scalars[name] = value
  return scalars


def build_example(features: Dict[str, object]) -> bytes:
  """Serializes name -> value, where a value is bytes/str, a number, or a sequence of them.

  Text and bytes become a bytes_list, floats a float_list, integers and bools an int64_list.
  """
  example = protos.Example()
  for name, value in features.items():
    if isinstance(value, (bytes, str)) or np.isscalar(value):
      value = [value]
    target = example.features.feature[name]
    if len(value) and isinstance(value[0], (bytes, str)):
      target.bytes_list.value.extend(
          v.encode('utf-8') if isinstance(v, str) else bytes(v) for v in value)
      continue
    array = np.asarray(value).ravel()
    if array.dtype.kind == 'f':
      target.float_list.value.extend(array.astype(np.float32).tolist())
    else:
      target.int64_list.value.extend(array.astype(np.int64).tolist())
  return example.SerializeToString()
