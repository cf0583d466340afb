"""NumPy's `.npy` format (what `np.save` writes), read without pickle.

Projects that dump arrays with NumPy rather than TensorFlow write `np.save` bytes as a
record, or as a bytes feature of an Example. Both are serialized tensors to unrecord:
the header gives dtype, shape and order; the element count is checked against the
bytes, and capped, before anything is allocated.
"""

from __future__ import annotations

import ast
import math
from typing import Tuple

import numpy as np

from transforms import errors
from transforms.pixels import normalize
from transforms.records import tensor_proto

MAGIC = b'\x93NUMPY'
_HEADER_LENGTH = {1: 2, 2: 4, 3: 4}  # bytes of the header-length field, by major version
_MAX_HEADER_BYTES = 10000  # NumPy's own limit (np.load's max_header_size)


def looks_like_npy(data) -> bool:
  return bytes(data[:6]) == MAGIC


def header(data) -> Tuple[Tuple[int, ...], np.dtype, bool, int]:
  """(shape, dtype, fortran_order, offset of the values); raises DecodeError."""
  data = memoryview(data)
  major = data[6] if len(data) > 7 else 0
  size = _HEADER_LENGTH.get(major)
  if size is None:
    raise errors.DecodeError(errors.DECODE_ERROR, 'not a .npy array (bad magic/version)')
  length = int.from_bytes(data[8:8 + size], 'little')
  start = 8 + size
  if length > _MAX_HEADER_BYTES or len(data) < start + length:
    raise errors.DecodeError(errors.DECODE_ERROR, '.npy header is too long or runs past '
                             'the record')
  try:
    fields = ast.literal_eval(bytes(data[start:start + length]).decode('latin1'))
    dtype = np.dtype(fields['descr'])
    shape = tuple(int(d) for d in fields['shape'])
    fortran = bool(fields['fortran_order'])
  except (ValueError, SyntaxError, KeyError, TypeError, RecursionError, MemoryError) as e:
    raise errors.DecodeError(errors.DECODE_ERROR, f'.npy header is not valid ({e})') from e
  if (dtype.hasobject or dtype.newbyteorder('=').name not in tensor_proto.DTYPE_NAMES or
      any(d < 0 for d in shape)):
    raise errors.DecodeError(
        errors.UNSUPPORTED_DTYPE, f'.npy array of dtype {dtype} is not an image; use one '
        f'of {", ".join(tensor_proto.DTYPE_NAMES)}')
  return shape, dtype, fortran, start + length


def to_array(data, max_elements: int, parsed_header=None) -> np.ndarray:
  """The array, in native byte order; raises DecodeError. `parsed_header`: `header(data)`
  when the caller has read it already."""
  shape, dtype, fortran, offset = parsed_header or header(data)
  count = math.prod(shape)
  if count > max_elements:
    raise errors.DecodeError(
        errors.TOO_MANY_PIXELS, f'.npy array of shape {list(shape)} holds {count} values, '
        f'more than the {max_elements} allowed')
  if len(data) - offset != count * dtype.itemsize:
    raise errors.DecodeError(
        errors.SHAPE_MISMATCH, f'.npy array of shape {list(shape)} and dtype {dtype} needs '
        f'{count * dtype.itemsize} bytes, the record holds {len(data) - offset}')
  array = np.frombuffer(data, dtype, count, offset).reshape(
      shape, order='F' if fortran else 'C')
  if not dtype.isnative:
    array = array.astype(dtype.newbyteorder('='))
  return normalize.aligned(np.ascontiguousarray(array))
