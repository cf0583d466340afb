"""tf.train.Example -> plain Python/NumPy feature values, without TensorFlow."""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Union

import numpy as np
from google.protobuf import message as protobuf_message

from transforms import errors
from transforms import protos

BYTES, INT64, FLOAT = 'bytes', 'int64', 'float'
Scalar = Union[int, float, str]
_MAX_SCALAR_TEXT = 4096  # longer bytes values are blobs, not ids or names


@dataclasses.dataclass(frozen=True)
class FeatureValue:
  """One feature: its kind and its values (a list of bytes, or a 1-D NumPy array)."""
  kind: str
  values: Union[List[bytes], np.ndarray]

  def __len__(self) -> int:
    return len(self.values)


def parse_example(payload: bytes) -> Dict[str, FeatureValue]:
  """Parses a serialized tf.train.Example; raises DecodeError(proto_parse)."""
  try:
    example = protos.Example.FromString(payload)
  except (protobuf_message.DecodeError, ValueError) as e:
    raise errors.DecodeError(
        errors.PROTO_PARSE, f'record is not a serialized tf.train.Example ({e})') from e
  features = {}
  for name, feature in example.features.feature.items():
    kind = feature.WhichOneof('kind')
    if kind == 'bytes_list':
      features[name] = FeatureValue(BYTES, list(feature.bytes_list.value))
    elif kind == 'int64_list':
      features[name] = FeatureValue(
          INT64, np.array(feature.int64_list.value, dtype=np.int64))
    elif kind == 'float_list':
      features[name] = FeatureValue(FLOAT, _packed_floats(feature.float_list))
    else:
      features[name] = FeatureValue(BYTES, [])
  return features


def _packed_floats(float_list) -> np.ndarray:
  """The values of a FloatList as float32, straight from their packed wire bytes."""
  wire = float_list.SerializeToString()
  if not wire:
    return np.zeros(0, dtype=np.float32)
  # wire = tag (0x0a) | varint byte length | little-endian float32s
  position, length, shift = 1, 0, 0
  while True:
    byte = wire[position]
    length |= (byte & 0x7F) << shift
    position += 1
    shift += 7
    if not byte & 0x80:
      break
  return np.frombuffer(wire, dtype='<f4', count=length // 4, offset=position)


def scalar_value(feature: FeatureValue) -> Union[Scalar, None]:
  """The single value of a one-value feature as int/float/str, else None."""
  if len(feature) != 1:
    return None
  value = feature.values[0]
  if feature.kind == BYTES:
    if len(value) > _MAX_SCALAR_TEXT:
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
