"""Reading protobuf wire bytes in place, for the few messages unrecord reads at volume.

`example._scan_example` and `tensor_proto._scan_tensor` use these to find a 600 KB image
inside a record without the copies protobuf's parser makes. They read only the
canonical encoding those messages have in practice and raise `NotCanonical` on anything
else, so protobuf's parser, with its own rules, decides every other case.
"""

from __future__ import annotations

from typing import Iterator, Tuple

VARINT, LENGTH_DELIMITED = 0, 2

# Messages smaller than this go to protobuf's C parser, which is faster on them than a
# scan in Python; above it the copies the scan saves outweigh its per-field cost.
SCAN_MIN_BYTES = 32 << 10


class NotCanonical(Exception):
  """The bytes are not the plain encoding the scan reads; protobuf's parser decides."""


def varint(data: bytes, position: int, end: int) -> Tuple[int, int]:
  """(value, next position) of the varint at `position`, at most 64 bits."""
  value = shift = 0
  while position < end:
    byte = data[position]
    position += 1
    value |= (byte & 0x7F) << shift
    if not byte & 0x80:
      if value >> 64:
        raise NotCanonical
      return value, position
    shift += 7
    if shift > 63:
      raise NotCanonical
  raise NotCanonical


def int64(value: int) -> int:
  """A varint's 64 bits read as protobuf's int64 (two's complement)."""
  return value - (1 << 64) if value >> 63 else value


def fields(data: bytes, start: int, end: int) -> Iterator[Tuple[int, int, int, int]]:
  """(field number, wire type, a, b) for each field in data[start:end].

  Varint fields give (number, VARINT, value, value); length-delimited ones give
  (number, LENGTH_DELIMITED, start, end) of their bytes. Other wire types, field
  number 0, or a length past `end` raise NotCanonical.
  """
  position = start
  while position < end:
    tag, position = varint(data, position, end)
    number, wire_type = tag >> 3, tag & 7
    if number == 0:
      raise NotCanonical
    if wire_type == VARINT:
      value, position = varint(data, position, end)
      yield number, VARINT, value, value
    elif wire_type == LENGTH_DELIMITED:
      length, position = varint(data, position, end)
      if position + length > end:
        raise NotCanonical
      yield number, LENGTH_DELIMITED, position, position + length
      position += length
    else:
      raise NotCanonical


def length_delimited(data: bytes, start: int, end: int) -> Iterator[Tuple[int, int, int]]:
  """(field number, start, end) of each field in data[start:end], all length-delimited."""
  for number, wire_type, field_start, field_end in fields(data, start, end):
    if wire_type != LENGTH_DELIMITED:
      raise NotCanonical
    yield number, field_start, field_end
