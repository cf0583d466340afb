"""TensorProto (tf.io.serialize_tensor) <-> NumPy, without TensorFlow.

Accepts `tensor_content` and the typed `*_val` fields, including the one-value broadcast
form that `tf.make_tensor_proto` produces. The element count implied by the shape is
checked against the data, and capped, before anything is allocated.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import numpy as np
from google.protobuf import message as protobuf_message

from transforms import errors
from transforms.pixels import normalize
from transforms.records import protos
from transforms.records import wire

DEFAULT_MAX_ELEMENTS = 1 << 30

# TF DataType enum value -> (name, NumPy dtype as stored, typed field).
# bfloat16 has no NumPy dtype: it is read as its uint16 bit pattern and widened to
# float32 exactly (bfloat16 is the top half of a float32).
_DTYPES: Dict[int, Tuple[str, np.dtype, str]] = {
    1: ('float32', np.dtype('<f4'), 'float_val'),
    2: ('float64', np.dtype('<f8'), 'double_val'),
    3: ('int32', np.dtype('<i4'), 'int_val'),
    4: ('uint8', np.dtype('u1'), 'int_val'),
    5: ('int16', np.dtype('<i2'), 'int_val'),
    6: ('int8', np.dtype('i1'), 'int_val'),
    9: ('int64', np.dtype('<i8'), 'int64_val'),
    10: ('bool', np.dtype('?'), 'bool_val'),
    14: ('bfloat16', np.dtype('<u2'), 'half_val'),
    17: ('uint16', np.dtype('<u2'), 'int_val'),
    19: ('float16', np.dtype('<f2'), 'half_val'),
    22: ('uint32', np.dtype('<u4'), 'uint32_val'),
    23: ('uint64', np.dtype('<u8'), 'uint64_val'),
}
_UNSUPPORTED_NAMES = {
    0: 'invalid', 7: 'string', 8: 'complex64', 11: 'qint8', 12: 'quint8', 13: 'qint32',
    15: 'qint16', 16: 'quint16', 18: 'complex128', 20: 'resource', 21: 'variant',
}
_NAME_TO_ENUM = {name: enum for enum, (name, _, _) in _DTYPES.items()}
DTYPE_NAMES = tuple(sorted(_NAME_TO_ENUM))


def dtype_name(enum: int) -> str:
  if enum in _DTYPES:
    return _DTYPES[enum][0]
  return _UNSUPPORTED_NAMES.get(enum, f'DataType({enum})')


def parse_tensor_proto(data: bytes):
  """The TensorProto message in `data`; raises DecodeError(proto_parse).

  Large tensors in the form `tf.io.serialize_tensor` writes are read in place
  (`_scan_tensor`): their `tensor_content` is a view of `data`, not a copy.
  """
  if len(data) >= wire.SCAN_MIN_BYTES:
    tensor = _scan_tensor(data)
    if tensor is not None:
      return tensor
  return _parse_with_protobuf(data)


def _parse_with_protobuf(data: bytes):
  try:
    return protos.TensorProto.FromString(data)
  except (protobuf_message.DecodeError, ValueError) as e:
    raise errors.DecodeError(
        errors.PROTO_PARSE, f'bytes are not a serialized TensorProto ({e})') from e


@dataclasses.dataclass(frozen=True)
class _Dim:
  size: int


@dataclasses.dataclass(frozen=True)
class _Shape:
  dim: Tuple[_Dim, ...]
  unknown_rank: bool = False


@dataclasses.dataclass(frozen=True)
class _ScannedTensor:
  """The TensorProto fields `tensor_to_array` reads, with tensor_content a memoryview."""
  dtype: int
  tensor_shape: _Shape
  tensor_content: memoryview


def _scan_tensor(data: bytes) -> Optional[_ScannedTensor]:
  """A TensorProto of dtype (1), tensor_shape (2: dim = 2 {size = 1}) and a non-empty
  tensor_content (4), each at most once, read in place; None for any other form (typed
  value fields, dimension names, unknown rank, negative sizes, a field twice, ...),
  which protobuf's parser then reads."""
  scanned = scan_tensor(data, 0, len(data))
  if scanned is None:
    return None
  dtype, dims, content_start, content_end = scanned
  return _ScannedTensor(dtype, _Shape(tuple(_Dim(d) for d in dims)),
                        memoryview(data)[content_start:content_end])


def scan_tensor(data: bytes, start: int, end: int
                ) -> Optional[Tuple[int, Tuple[int, ...], int, int]]:
  """(dtype, dimension sizes, content start, content end) of the TensorProto in
  data[start:end], in the one form `_scan_tensor` reads; None for any other."""
  try:
    seen = {}
    for number, wire_type, field_start, field_end in wire.fields(data, start, end):
      if number in seen or (number, wire_type) not in (
          (1, wire.VARINT), (2, wire.LENGTH_DELIMITED), (4, wire.LENGTH_DELIMITED)):
        return None
      seen[number] = (field_start, field_end)
    dtype = seen.get(1, (0, 0))[0]  # absent: 0, DT_INVALID, as protobuf reads it
    if 4 not in seen or seen[4][0] == seen[4][1] or dtype >= 1 << 31:
      return None
    dims = []
    if 2 in seen:
      for number, shape_start, shape_end in wire.length_delimited(data, *seen[2]):
        if number != 2:
          return None
        size = 0
        for dim_field, wire_type, value, _ in wire.fields(data, shape_start, shape_end):
          if dim_field != 1 or wire_type != wire.VARINT or value >> 63:
            return None
          size = value
        dims.append(size)
  except wire.NotCanonical:
    return None
  return dtype, tuple(dims), seen[4][0], seen[4][1]


def tensor_shape(tensor) -> Tuple[int, ...]:
  if tensor.tensor_shape.unknown_rank:
    raise errors.DecodeError(errors.SHAPE_MISMATCH, 'tensor has unknown rank')
  shape = tuple(int(d.size) for d in tensor.tensor_shape.dim)
  if any(d < 0 for d in shape):
    raise errors.DecodeError(errors.SHAPE_MISMATCH, f'tensor shape {list(shape)} has a '
                             'negative dimension')
  return shape


def tensor_to_array(tensor, *, max_elements: int = DEFAULT_MAX_ELEMENTS) -> np.ndarray:
  """Decodes a parsed TensorProto to an array of its own dtype (bfloat16 -> float32)."""
  if tensor.dtype not in _DTYPES:
    raise errors.DecodeError(
        errors.UNSUPPORTED_DTYPE,
        f'tensor dtype {dtype_name(tensor.dtype)} is not an image dtype; supported: '
        f'{", ".join(DTYPE_NAMES)}')
  name, dtype, typed_field = _DTYPES[tensor.dtype]
  shape = tensor_shape(tensor)
  count = 1
  for d in shape:
    count *= d
  if count > max_elements:
    raise errors.DecodeError(
        errors.TOO_MANY_PIXELS,
        f'tensor shape {list(shape)} claims {count} elements, more than the limit of '
        f'{max_elements}; nothing was allocated')
  content = tensor.tensor_content
  if content:
    if len(content) != count * dtype.itemsize:
      raise errors.DecodeError(
          errors.SHAPE_MISMATCH,
          f'tensor_content holds {len(content)} bytes but shape {list(shape)} of '
          f'{name} needs {count * dtype.itemsize}')
    flat = normalize.aligned(np.frombuffer(content, dtype=dtype))
  else:
    values = getattr(tensor, typed_field)
    if len(values) == count:
      flat = _typed_values(np.array(values, dtype=_typed_dtype(typed_field)), dtype)
    elif len(values) == 1 and count > 1:
      flat = _typed_values(
          np.full(count, values[0], dtype=_typed_dtype(typed_field)), dtype)
    elif count == 0 and not values:
      flat = np.zeros(0, dtype=dtype)
    else:
      raise errors.DecodeError(
          errors.SHAPE_MISMATCH,
          f'tensor {typed_field} holds {len(values)} values but shape {list(shape)} '
          f'needs {count}')
  array = flat.reshape(shape)
  if name == 'bfloat16':
    array = widen_bfloat16(array)
  return array


def _typed_values(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
  if values.dtype == np.dtype('<u2'):
    return values.view(dtype)  # half_val holds bit patterns, not numbers
  return values.astype(dtype, copy=False)


def _typed_dtype(field: str) -> np.dtype:
  if field == 'half_val':
    return np.dtype('<u2')  # the values are 16-bit patterns held in int32s
  return {
      'float_val': np.dtype('<f4'), 'double_val': np.dtype('<f8'),
      'int_val': np.dtype('<i8'), 'int64_val': np.dtype('<i8'),
      'bool_val': np.dtype('?'), 'uint32_val': np.dtype('<u8'),
      'uint64_val': np.dtype('<u8'),
  }[field]


def parse_tensor(data: bytes, *, max_elements: int = DEFAULT_MAX_ELEMENTS
                 ) -> Tuple[np.ndarray, str]:
  """Decodes `tf.io.serialize_tensor` output; returns (array, TF dtype name)."""
  tensor = parse_tensor_proto(data)
  return tensor_to_array(tensor, max_elements=max_elements), dtype_name(tensor.dtype)


def widen_bfloat16(bits: np.ndarray) -> np.ndarray:
  """bfloat16 values (their uint16 bit patterns) as float32, exactly: the same sign,
  exponent and leading mantissa bits, the low 16 mantissa bits zero."""
  return (bits.astype(np.uint32) << 16).view(np.float32)


def looks_like_tensor(data: bytes) -> bool:
  """True when `data` is a well-formed serialized image-like tensor (rank >= 2)."""
  try:
    tensor = protos.TensorProto.FromString(data)
  except (protobuf_message.DecodeError, ValueError):
    return False
  if tensor.dtype not in _DTYPES or tensor.tensor_shape.unknown_rank:
    return False
  dims = tensor.tensor_shape.dim
  if len(dims) < 2 or any(d.size <= 0 for d in dims):
    return False
  count = 1
  for d in dims:
    count *= d.size
  itemsize = _DTYPES[tensor.dtype][1].itemsize
  if tensor.tensor_content:
    return len(tensor.tensor_content) == count * itemsize
  values = len(getattr(tensor, _DTYPES[tensor.dtype][2]))
  return values == count or values == 1


def serialize_tensor(array: np.ndarray) -> bytes:
  """The same bytes `tf.io.serialize_tensor` gives for `array` (tensor_content form)."""
  array = np.asarray(array)
  key = array.dtype.name
  if key not in _NAME_TO_ENUM or key == 'bfloat16':
    raise errors.ConfigError(f'cannot serialize dtype {array.dtype}')
  enum = _NAME_TO_ENUM[key]
  tensor = protos.TensorProto(dtype=enum)
  for d in array.shape:
    tensor.tensor_shape.dim.add(size=d)
  tensor.tensor_content = np.ascontiguousarray(
      array, dtype=_DTYPES[enum][1]).tobytes()
  return tensor.SerializeToString()
