"""What one TFRecord holds, and the features each of its images is decoded from.

Four kinds of record are common, and `kind_of` tells them apart by their first bytes:
  example           a tf.train.Example: features by name
  sequence_example  a tf.train.SequenceExample: context features (a clip's id, its label)
                    and feature lists holding one value per step (frames, views)
  tensor            the record is itself `tf.io.serialize_tensor` output, or an `np.save`
                    array (`transforms.records.npy`)
  image             the record is itself an encoded image (PNG, JPEG, WebP, ...)

`parse` turns each into a `Parsed`: named features, as `transforms.images.decode` reads them.
A bare tensor or image is the one feature `RECORD_KEY`. A SequenceExample's image is a
feature list; `Parsed.steps` gives a feature dict per step (the context plus that step's
value of every list), so each step decodes like an Example and is numbered like one
image of a batch.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

from transforms import errors
from transforms.pixels import image_formats
from transforms.records import example as example_lib
from transforms.records import npy
from transforms.records import tensor_proto
from transforms.records import wire
from transforms.records.example import FeatureValue

EXAMPLE, SEQUENCE_EXAMPLE, TENSOR, IMAGE = 'example', 'sequence_example', 'tensor', 'image'
KINDS = (EXAMPLE, SEQUENCE_EXAMPLE, TENSOR, IMAGE)
# The image key of a record that is itself the image (kinds tensor and image).
RECORD_KEY = 'record'


def kind_of(payload) -> str:
  """The kind of one record, from its bytes. Anything unrecognised is an Example, whose
  parser then says what is wrong with it."""
  if image_formats.sniff_format(payload):
    return IMAGE
  if npy.looks_like_npy(payload):
    return TENSOR
  try:
    top = [(number, wire_type)
           for number, wire_type, _, _ in wire.fields(payload, 0, len(payload))]
  except wire.NotCanonical:
    return EXAMPLE
  if top[:1] == [(1, wire.VARINT)] and tensor_proto.looks_like_tensor(bytes(payload)):
    return TENSOR
  # Example has one field (features = 1); SequenceExample adds feature_lists = 2.
  if (2, wire.LENGTH_DELIMITED) in top and all(
      number in (1, 2) and wire_type == wire.LENGTH_DELIMITED for number, wire_type in top):
    return SEQUENCE_EXAMPLE
  return EXAMPLE


@dataclasses.dataclass(frozen=True)
class Parsed:
  """One record's features: an Example's, a SequenceExample's context, or the record
  itself as `RECORD_KEY`; and a SequenceExample's feature lists."""
  kind: str
  features: Dict[str, FeatureValue]
  feature_lists: Dict[str, List[FeatureValue]] = dataclasses.field(default_factory=dict)

  def steps(self, key: Optional[str]) -> List[Dict[str, FeatureValue]]:
    """The feature dicts `key` is decoded from: one per step when it names a feature
    list, else the record's features."""
    if key not in self.feature_lists:
      return [self.features]
    return [self._step(i) for i in range(len(self.feature_lists[key]))]

  def first_step(self) -> Dict[str, FeatureValue]:
    """The features an image is looked for in: the record's, plus each feature list's
    first value."""
    return self._step(0) if self.feature_lists else self.features

  def _step(self, i: int) -> Dict[str, FeatureValue]:
    step = dict(self.features)
    step.update((name, values[i]) for name, values in self.feature_lists.items()
                if i < len(values))
    return step


def parse(payload, kind: Optional[str] = None) -> Parsed:
  """The record's features. `kind` is what the run expects (None: detect it); a record
  that turns out to be another kind is parsed as what it is, so a run over a mix of
  kinds reads each record right at no cost to the records that are as expected.
  Raises DecodeError(proto_parse) for a record that is none of the kinds."""
  if kind is None:
    return _parse_as(payload, kind_of(payload))
  try:
    parsed = _parse_as(payload, kind)
  except errors.DecodeError:
    actual = kind_of(payload)
    if actual == kind:
      raise
    try:
      return _parse_as(payload, actual)
    except errors.DecodeError:
      pass
    raise
  # protobuf keeps fields of the wrong wire type as unknown ones: a tensor or an image
  # can parse as an Example with no features.
  if kind == EXAMPLE and not parsed.features and len(payload):
    actual = kind_of(payload)
    if actual != EXAMPLE:
      return _parse_as(payload, actual)
  return parsed


def _parse_as(payload, kind: str) -> Parsed:
  if kind == EXAMPLE:
    return Parsed(kind, example_lib.parse_example(payload))
  if kind == SEQUENCE_EXAMPLE:
    context, lists = example_lib.parse_sequence_example(bytes(payload))
    return Parsed(kind, context, lists)
  if kind == TENSOR:
    if not (npy.looks_like_npy(payload) or tensor_proto.looks_like_tensor(bytes(payload))):
      raise errors.DecodeError(
          errors.PROTO_PARSE, 'record is not a serialized tensor of rank 2 or more')
  elif kind == IMAGE:
    if not image_formats.sniff_format(payload):
      raise errors.DecodeError(
          errors.PROTO_PARSE, 'record is not an encoded image (PNG, JPEG, WebP, BMP, '
          'TIFF, GIF)')
  else:
    raise errors.ConfigError(f'record kind must be one of {", ".join(KINDS)}, got {kind!r}')
  return Parsed(kind, {RECORD_KEY: FeatureValue(example_lib.BYTES, [payload])})


def is_bare(kind: str) -> bool:
  """True for records that are themselves the image (no features to choose from)."""
  return kind in (TENSOR, IMAGE)
