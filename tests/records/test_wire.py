"""Examples and TensorProtos read in place from their wire bytes equal protobuf's parse."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests import fixtures
from transforms import errors
from transforms.records import example as example_lib
from transforms.records import protos
from transforms.records import tensor_proto
from transforms.records import wire

tf = fixtures.tf

names = st.text(min_size=0, max_size=12)
bytes_values = st.lists(st.binary(max_size=40) | st.integers(0, 70_000).map(bytes),
                        max_size=3)
int_values = st.lists(st.integers(-2**63, 2**63 - 1), max_size=5)
float_values = st.lists(st.floats(width=32) | st.sampled_from([float('nan')]), max_size=5)
features = st.dictionaries(
    names, st.tuples(st.sampled_from(['bytes', 'int64', 'float', 'none']),
                     bytes_values, int_values, float_values), max_size=4)


def _serialize(spec) -> bytes:
  message = protos.Example()
  for name, (kind, as_bytes, as_ints, as_floats) in spec.items():
    feature = message.features.feature[name]
    if kind == 'bytes':
      feature.bytes_list.value.extend(as_bytes)
      feature.bytes_list.SetInParent()
    elif kind == 'int64':
      feature.int64_list.value.extend(as_ints)
      feature.int64_list.SetInParent()
    elif kind == 'float':
      feature.float_list.value.extend(as_floats)
      feature.float_list.SetInParent()
  return message.SerializeToString()


def _same(scanned, parsed, payload) -> bool:
  if scanned.keys() != parsed.keys():
    return False
  record = np.frombuffer(payload, np.uint8)
  for name, value in scanned.items():
    other = parsed[name]
    if value.kind != other.kind:
      return False
    if value.kind == example_lib.BYTES:
      views = value.buffers()
      # lent in place: views of the record, not copies (empty values hold no memory)
      if [bytes(v) for v in views] != other.values or not all(
          not len(v) or np.shares_memory(np.frombuffer(v, np.uint8), record) for v in views):
        return False
      if value.values != other.values or not all(type(v) is bytes for v in value.values):
        return False
    elif not (value.values.dtype == other.values.dtype and
              value.values.tobytes() == other.values.tobytes()):  # NaN bits too
      return False
  return True


@settings(max_examples=300, deadline=None)
@given(features)
def test_scanned_examples_equal_protobufs_parse(spec):
  payload = _serialize(spec)
  scanned = example_lib._scan_example(payload)
  assert scanned is not None  # protobuf's own output is the canonical form
  assert _same(scanned, example_lib._parse_with_protobuf(payload), payload)


@settings(max_examples=500, deadline=None)
@given(features.filter(bool), st.data())
def test_damaged_examples_are_scanned_as_protobuf_reads_them_or_left_to_it(spec, data):
  payload = bytearray(_serialize(spec))
  for _ in range(data.draw(st.integers(1, 3))):
    at = data.draw(st.integers(0, len(payload) - 1))
    action = data.draw(st.sampled_from(['flip', 'cut', 'insert']))
    if action == 'flip':
      payload[at] ^= data.draw(st.integers(1, 255))
    elif action == 'cut':
      del payload[at:at + data.draw(st.integers(1, 8))]
    else:
      payload[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    if not payload:
      return
  payload = bytes(payload)
  scanned = example_lib._scan_example(payload)
  if scanned is None:
    return
  parsed = example_lib._parse_with_protobuf(payload)  # must not raise: the scan accepted
  assert _same(scanned, parsed, payload)


def test_float_lists_come_back_aligned_from_either_parser():
  floats = np.linspace(0, 1, 28 * 28, dtype=np.float32)
  small = example_lib.build_example({'image': floats})
  large = example_lib.build_example({'image': np.resize(floats, 16 * 28 * 28)})
  assert len(large) >= wire.SCAN_MIN_BYTES > len(small)
  for payload, expected in ((small, floats), (large, np.resize(floats, 16 * 28 * 28))):
    values = example_lib.parse_example(payload)['image'].values
    assert values.flags.aligned and values.tobytes() == expected.tobytes()


def test_large_records_take_the_scan_and_small_ones_protobuf(monkeypatch):
  big = tensor_proto.serialize_tensor(np.zeros((128, 128, 3), np.float32))
  payload = example_lib.build_example({'image': big, 'label': 3})
  calls = []
  original = example_lib._scan_example
  monkeypatch.setattr(example_lib, '_scan_example',
                      lambda p: calls.append(len(p)) or original(p))
  assert example_lib.parse_example(payload)['image'].values == [big]
  example_lib.parse_example(example_lib.build_example({'label': 3}))
  assert calls == [len(payload)]


@pytest.mark.parametrize('dtype', ['float32', 'float64', 'uint8', 'uint16', 'int32',
                                   'float16', 'bfloat16', 'bool'])
@pytest.mark.parametrize('shape', [(1, 1), (64, 80, 3), (3, 96, 96), (2, 48, 48, 4)])
def test_scanned_tensors_written_by_tensorflow_equal_protobufs_parse(dtype, shape):
  rng = np.random.default_rng(7)
  values = tf.cast(tf.constant(rng.uniform(0, 200, shape)), dtype)
  data = tf.io.serialize_tensor(values).numpy()
  scanned = tensor_proto._scan_tensor(data)
  parsed = tensor_proto._parse_with_protobuf(data)
  if not parsed.tensor_content:  # TF writes small or constant tensors as typed values
    assert scanned is None
    return
  assert scanned is not None
  array = tensor_proto.tensor_to_array(scanned)
  expected = tensor_proto.tensor_to_array(parsed)
  assert array.dtype == expected.dtype and array.shape == expected.shape == shape
  assert array.tobytes() == expected.tobytes()
  # Read in place where the items sit at an offset they can be read at; copied (once, to
  # an aligned array) where they do not.
  assert array.flags.aligned
  content = np.frombuffer(scanned.tensor_content, np.uint8)
  in_place = content.ctypes.data % array.dtype.alignment == 0 and dtype != 'bfloat16'
  assert np.shares_memory(array, np.frombuffer(data, np.uint8)) == in_place


def _tensor_bytes(**fields) -> bytes:
  tensor = protos.TensorProto(dtype=fields.pop('dtype', 1))
  for size in fields.pop('dims', (2, 2)):
    tensor.tensor_shape.dim.add(size=size)
  for name, value in fields.items():
    if name == 'unknown_rank':
      tensor.tensor_shape.unknown_rank = value
    elif name == 'dim_name':
      tensor.tensor_shape.dim[0].name = value
    elif isinstance(value, list):
      getattr(tensor, name).extend(value)
    else:
      setattr(tensor, name, value)
  return tensor.SerializeToString()


@pytest.mark.parametrize('fields', [
    {'float_val': [1.0]}, {'dim_name': 'h', 'tensor_content': b'\0' * 16},
    {'unknown_rank': True, 'tensor_content': b'\0' * 16},
    {'dims': (-2, 2), 'tensor_content': b'\0' * 16},
    {'version_number': 3, 'tensor_content': b'\0' * 16},
    {'tensor_content': b''},
])
def test_other_tensor_forms_are_left_to_protobuf(fields):
  assert tensor_proto._scan_tensor(_tensor_bytes(**fields)) is None


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_damaged_tensors_are_scanned_as_protobuf_reads_them_or_left_to_it(data):
  payload = bytearray(tensor_proto.serialize_tensor(
      np.arange(data.draw(st.integers(1, 40)), dtype=np.float32).reshape(1, -1)))
  for _ in range(data.draw(st.integers(1, 3))):
    at = data.draw(st.integers(0, len(payload) - 1))
    payload[at] ^= data.draw(st.integers(1, 255))
  payload = bytes(payload)
  scanned = tensor_proto._scan_tensor(payload)
  if scanned is None:
    return
  parsed = tensor_proto._parse_with_protobuf(payload)
  assert scanned.dtype == parsed.dtype
  assert [d.size for d in scanned.tensor_shape.dim] == [
      d.size for d in parsed.tensor_shape.dim]
  assert not parsed.tensor_shape.unknown_rank
  assert bytes(scanned.tensor_content) == parsed.tensor_content
  try:
    expected = tensor_proto.tensor_to_array(parsed)
  except errors.DecodeError as e:
    with pytest.raises(errors.DecodeError, match=e.reason):
      tensor_proto.tensor_to_array(scanned)
  else:
    assert tensor_proto.tensor_to_array(scanned).tobytes() == expected.tobytes()
