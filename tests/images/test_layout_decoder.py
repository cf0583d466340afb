"""Records decoded by their layout (transforms/images/layout_decoder.py) equal a full decode."""

import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tests import fixtures
from transforms import errors
from transforms.images import decode
from transforms.images import layout_decoder
from transforms.inputs.tfrecord import RecordRef

F = fixtures
RAW = decode.ImageSpec(key='image/raw', encoding='raw')
_FIELDS = ('ref', 'n', 'axes', 'source_dtype', 'encoding', 'key', 'features', 'encoded',
           'encoded_format', 'batch_size', 'stored_shape', 'stored_axes')


def _outcome(decode_one, ref, payload):
  """What a decode gives: each image's fields and pixels, or the error's reason and text."""
  try:
    images = decode_one(ref, payload)
  except errors.UnrecordError as e:
    return ('error', e.reason, str(e))
  return [(tuple(getattr(image, f) for f in _FIELDS), image.pixels.dtype,
           image.pixels.shape, image.pixels.tobytes(), image.pixels.flags.aligned)
          for image in images]


def _decode_all(payloads, spec=RAW, monkeypatch=None, outcome=_outcome):
  """Each payload through one LayoutDecoder and through decode_record; how many of the
  LayoutDecoder's went to the full decode."""
  full = []
  if monkeypatch is not None:
    original = decode.decode_record
    monkeypatch.setattr(decode, 'decode_record',
                        lambda *args: full.append(1) or original(*args))
  decoder = layout_decoder.LayoutDecoder(spec)
  refs = [RecordRef('data.tfrecord', i, i * 1000) for i in range(len(payloads))]
  got = [outcome(decoder.decode, ref, p) for ref, p in zip(refs, payloads)]
  calls = len(full)
  if monkeypatch is not None:
    monkeypatch.undo()
  expected = [outcome(lambda r, p: decode.decode_record(r, p, spec), ref, p)
              for ref, p in zip(refs, payloads)]
  return got, expected, calls


def _record(index, label=None, shape=(28, 28, 1), **extra):
  pixels = F.gray_photo(index=index % 8)[:shape[0], :shape[1]]
  pixels = np.resize(pixels, shape)
  features = {'image/raw': F.bytes_feature(pixels.tobytes()),
              'image/shape': F.int64_feature(*shape),
              'label': F.int64_feature(index % 10 if label is None else label)}
  features.update(extra)
  return F.example(features)


def test_a_tensorflow_dataset_decodes_by_layout_as_in_full(monkeypatch):
  payloads = [
      _record(i, label=i * 37 % 200,  # labels from 128 on take a second varint byte
              id=F.bytes_feature(f'img-{i:03d}'.encode()),
              score=F.float_feature(i / 7),
              box=F.float_feature(0.1 * i, 0.2, 0.3 * i, 0.4),
              tags=F.bytes_feature(b'a%d' % (i % 3), b'b'),
              height=F.int64_feature(28))
      for i in range(60)]
  got, expected, full_decodes = _decode_all(payloads, monkeypatch=monkeypatch)
  assert got == expected
  assert got[5][0][0][6] == {'label': 5 * 37 % 200, 'id': 'img-005', 'score':
                             pytest.approx(5 / 7), 'height': 28}
  # one full decode per record length (two label widths), every other record by layout
  assert full_decodes == len({len(p) for p in payloads}) == 2


@pytest.mark.parametrize('dtype', ['uint8', 'uint16', 'float32', 'bfloat16'])
def test_typed_raw_pixels_with_a_dtype_feature(dtype, monkeypatch):
  rng = np.random.default_rng(3)
  payloads = []
  for i in range(6):
    values = rng.uniform(0, 200, (4, 5, 3)).astype(np.float32)
    data = (values.view(np.uint32) >> 16).astype('<u2').tobytes() if dtype == 'bfloat16' \
        else values.astype(dtype).tobytes()
    payloads.append(F.example({
        'image/raw': F.bytes_feature(data), 'image/raw/dtype': F.bytes_feature(dtype.encode()),
        'image/raw/shape': F.int64_feature(4, 5, 3), 'n': F.int64_feature(i)}))
  got, expected, full_decodes = _decode_all(payloads, monkeypatch=monkeypatch)
  assert got == expected and full_decodes == 1
  assert all(aligned for record in got for *_, aligned in record)


def test_a_batch_in_one_record_splits_as_in_full():
  payloads = [_record(i, shape=(2, 8, 8, 1)) for i in range(4)]
  got, expected, _ = _decode_all(payloads)
  assert got == expected and [len(images) for images in got] == [2, 2, 2, 2]


def test_a_changed_shape_feature_of_the_same_length_is_decoded_in_full(monkeypatch):
  payloads = [_record(0, shape=(28, 28, 1)), _record(1, shape=(14, 28, 2))]
  assert len(payloads[0]) == len(payloads[1])
  got, expected, full_decodes = _decode_all(payloads, monkeypatch=monkeypatch)
  assert got == expected and full_decodes == 2
  assert got[1][0][2] == (14, 28, 2)


def test_a_label_that_becomes_two_values_in_the_same_bytes_is_no_feature():
  one = _record(0, label=300)  # one varint of two bytes
  two = F.example({'image/raw': F.bytes_feature(F.gray_photo().tobytes()),
                   'image/shape': F.int64_feature(28, 28, 1),
                   'label': F.int64_feature(5, 7)})  # two varints in the same two bytes
  assert len(one) == len(two)
  got, expected, _ = _decode_all([one, two])
  assert got == expected
  assert 'label' in got[0][0][0][6] and 'label' not in got[1][0][0][6]


def test_a_malformed_varint_in_a_value_is_left_to_protobuf():
  one = _record(0, label=300)
  damaged = bytearray(one)
  at = bytes(one).rindex(bytes([0xAC, 0x02]))  # 300, in the label's packed list
  damaged[at + 1] = 0x82  # the list now ends inside a varint
  got, expected, _ = _decode_all([one, bytes(damaged)])
  assert got == expected and got[1][0] == 'error'


def test_other_encodings_and_unknown_keys_are_decoded_in_full(monkeypatch):
  payloads = [_record(i) for i in range(3)]
  for spec in (decode.ImageSpec(), decode.ImageSpec(key='image/raw')):
    got, expected, full_decodes = _decode_all(payloads, spec, monkeypatch)
    assert got == expected and full_decodes == 3


_values = st.one_of(
    st.tuples(st.just('bytes'), st.lists(st.binary(max_size=12), max_size=3)),
    st.tuples(st.just('int64'), st.lists(st.integers(-2**63, 2**63 - 1), max_size=3)),
    st.tuples(st.just('float'), st.lists(st.floats(width=32), max_size=3)))
_others = st.dictionaries(st.sampled_from(['label', 'id', 'box', 'image/raw/shape',
                                           'height', 'width', 'dtype', 'x']),
                          _values, max_size=4)


def _feature(kind, values):
  return {'bytes': F.bytes_feature, 'int64': F.int64_feature,
          'float': F.float_feature}[kind](*values)


@settings(max_examples=300, deadline=None)
@given(_others, st.integers(1, 6), st.integers(1, 6), st.data())
def test_any_record_after_a_learned_one_decodes_as_in_full(others, height, width, data):
  """A second record with the first one's features and other values, or its bytes
  damaged: the layout path gives what the full decode gives, images or error."""
  def record(values):
    features = {name: _feature(*values[name]) for name in others}
    features['image/raw'] = F.bytes_feature(data.draw(
        st.binary(min_size=height * width, max_size=height * width)))
    features['image/shape'] = F.int64_feature(height, width)
    return F.example(features)

  _check_learned_then_varied(record, others, data, RAW)


def _check_learned_then_varied(record, others, data, spec, decode_all=None,
                              nan_safe=None):
  """record(values) learned, then a record with other values of the same features, then
  that one with up to two bytes damaged: each decodes by layout as in full."""
  first = record(others)
  second = record({name: (kind, data.draw(st.lists(
      st.binary(max_size=12) if kind == 'bytes' else
      st.integers(-2**63, 2**63 - 1) if kind == 'int64' else st.floats(width=32),
      min_size=len(values), max_size=len(values))))
      for name, (kind, values) in others.items()})
  damaged = bytearray(second)
  for _ in range(data.draw(st.integers(0, 2))):
    damaged[data.draw(st.integers(0, len(damaged) - 1))] ^= data.draw(st.integers(1, 255))
  got, expected, _ = (decode_all or _decode_all)([first, second, bytes(damaged)], spec)
  nan_safe = nan_safe or _nan_safe
  assert nan_safe(got) == nan_safe(expected)


def _nan_safe(outcomes):
  """Outcomes with NaN features as a marker, since NaN != NaN."""
  return [[(fields[:6] + ({k: 'nan' if v != v else v for k, v in fields[6].items()},)
            + fields[7:], *rest) for fields, *rest in outcome]
          if outcome[0] != 'error' else outcome for outcome in outcomes]


def test_records_with_many_fixed_bytes_keep_no_layout(monkeypatch):
  mask = F.int64_feature(*range(1000, 1000 + 30_000))  # 90 KB of varints, kept fixed
  payloads = [_record(i, mask=mask) for i in range(3)]
  got, expected, full_decodes = _decode_all(payloads, monkeypatch=monkeypatch)
  assert got == expected and full_decodes == 3
  small = [_record(i, mask=F.int64_feature(*range(1000, 1100))) for i in range(3)]
  assert _decode_all(small, monkeypatch=monkeypatch)[2] == 1


# Serialized tensors (tf.io.serialize_tensor) in an Example: the tensor's header is
# fixed bytes, its tensor_content the pixels' span.
TENSOR = decode.ImageSpec(key='image', encoding='tensor')


def _tensor_record(array, **extra):
  return F.example({'image': F.bytes_feature(F.serialized_tensor(array)), **extra})


def test_tensorflow_serialized_tensors_decode_by_layout_as_in_full(monkeypatch):
  photos = [(F.photo(i, 32, 32) / 255.0).astype(np.float32) for i in range(4)]
  payloads = [_tensor_record(photos[i % 4], label=F.int64_feature(i * 37 % 200),
                             id=F.bytes_feature(b'img-%03d' % i))
              for i in range(40)]
  got, expected, full_decodes = _decode_all(payloads, TENSOR, monkeypatch)
  assert got == expected
  assert got[3][0][0][4] == 'tensor' and got[3][0][0][6] == {'label': 3 * 37 % 200,
                                                             'id': 'img-003'}
  assert full_decodes == len({len(p) for p in payloads}) == 2


@pytest.mark.parametrize('dtype', ['uint8', 'uint16', 'int16', 'float16', 'float32',
                                   'float64', 'bfloat16', 'bool'])
def test_every_tensor_dtype_decodes_by_layout_as_in_full(dtype, monkeypatch):
  import tensorflow as tf
  rng = np.random.default_rng(5)
  payloads = []
  for i in range(5):
    values = rng.uniform(0, 2 if dtype == 'bool' else 200, (6, 5, 3))
    tensor = tf.cast(tf.constant(values), getattr(tf, dtype))
    payloads.append(F.example({
        'image': F.bytes_feature(tf.io.serialize_tensor(tensor).numpy()),
        'n': F.int64_feature(i)}))
  got, expected, full_decodes = _decode_all(payloads, TENSOR, monkeypatch)
  assert got == expected and full_decodes == 1
  assert all(aligned for record in got for *_, aligned in record)


def test_in_place_pixels_are_the_full_decodes_values_left_in_the_record():
  photos = [(F.photo(i, 16, 16) / 255.0).astype(np.float32) for i in range(4)]
  # Labels of one and two varint bytes (from 150 on) make records of two lengths.
  payloads = [_tensor_record(photos[i % 4], label=F.int64_feature(i * 50))
              for i in range(8)]
  decoder = layout_decoder.LayoutDecoder(TENSOR, in_place=True)
  misaligned = 0
  for i, payload in enumerate(payloads):
    ref = RecordRef('data.tfrecord', i, 0)
    [got] = decoder.decode(ref, payload)
    [expected] = decode.decode_record(ref, payload, TENSOR)
    assert got.pixels.dtype == expected.pixels.dtype and np.array_equal(got.pixels,
                                                                        expected.pixels)
    assert expected.pixels.flags.aligned
    # Each length is learned at its first record; the rest are read by layout, in place.
    if i not in (0, 3):
      assert np.shares_memory(got.pixels, np.frombuffer(payload, np.uint8))
      misaligned += not got.pixels.flags.aligned
  assert misaligned


def test_a_tensor_of_another_shape_in_the_same_bytes_is_decoded_in_full(monkeypatch):
  values = (F.photo(0, 24, 24) / 255.0).astype(np.float32)
  payloads = [_tensor_record(values[:12, :18]), _tensor_record(values[:18, :12]),
              _tensor_record(values[:12, :18].copy() * 0.5)]
  assert len({len(p) for p in payloads}) == 1
  got, expected, full_decodes = _decode_all(payloads, TENSOR, monkeypatch)
  assert got == expected and full_decodes == 2
  assert [record[0][2] for record in got] == [(12, 18, 3), (18, 12, 3), (12, 18, 3)]


def test_encoded_images_and_npy_arrays_under_a_tensor_key_keep_no_layout(monkeypatch):
  import io
  photo = F.photo(1, 16, 16)
  npy_bytes = io.BytesIO()
  np.save(npy_bytes, (photo / 255.0).astype(np.float32))
  for value in (F.encode_png(photo), npy_bytes.getvalue()):
    payloads = [F.example({'image': F.bytes_feature(value), 'n': F.int64_feature(i)})
                for i in range(3)]
    got, expected, full_decodes = _decode_all(payloads, TENSOR, monkeypatch)
    assert got == expected and full_decodes == 3


def test_a_tensor_header_shorter_than_what_sniffing_reads_is_no_layout():
  # Every tensor of two or more dimensions has a header of 14 bytes or more; a 1-D one
  # (10 bytes) would let its content decide what sniff_format says of the value.
  for array, content_at in ((np.arange(40, dtype=np.uint8), None),
                            (np.zeros((5, 8), np.uint8) + 7, 14)):
    value = F.serialized_tensor(array)
    span = layout_decoder._tensor_content(b'ab' + value, (2, 2 + len(value)))
    assert span == (None if content_at is None else (2 + content_at, 2 + len(value)))


_tensor_dtypes = st.sampled_from(['uint8', 'uint16', 'float32', 'float64'])


@settings(max_examples=200, deadline=None)
@given(_others, _tensor_dtypes, st.integers(1, 6), st.integers(1, 6), st.data())
def test_any_tensor_record_after_a_learned_one_decodes_as_in_full(others, dtype, height,
                                                                  width, data):
  """As for raw pixels: a second record with the first one's features and other values,
  then its bytes damaged, anywhere, the tensor's header included."""
  itemsize = np.dtype(dtype).itemsize

  def record(values):
    features = {name: _feature(*values[name]) for name in others}
    pixels = np.frombuffer(data.draw(st.binary(min_size=height * width * 3 * itemsize,
                                               max_size=height * width * 3 * itemsize)),
                           dtype).reshape(height, width, 3)
    features['image'] = F.bytes_feature(F.serialized_tensor(pixels))
    return F.example(features)

  _check_learned_then_varied(record, others, data, TENSOR)


# Encoded images (TFDS-style JPEG or PNG under a key): each file has its own size, so
# the lengths around it vary with it (layout_decoder.EncodedLayout).
ENCODED = decode.ImageSpec(key='image', encoding='encoded', decode_encoded=False)
_ENCODED_FIELDS = _FIELDS + ('pixels',)


def _encoded_outcome(decode_one, ref, payload):
  try:
    images = decode_one(ref, payload)
  except errors.UnrecordError as e:  # Pillow's messages name objects by their address
    return ('error', e.reason, re.sub(r' at 0x[0-9a-f]+', '', str(e)))
  return [tuple(getattr(image, f) if f != 'pixels' else
                (None if image.pixels is None else
                 (image.pixels.dtype, image.pixels.shape, image.pixels.tobytes()))
                for f in _ENCODED_FIELDS) for image in images]


def _decode_encoded_all(payloads, spec=ENCODED, monkeypatch=None):
  return _decode_all(payloads, spec, monkeypatch, outcome=_encoded_outcome)


def _jpegs(count, side=(40, 120)):
  """Distinct JPEGs of real photographs, from under 1 KB to past 16 KB (where the
  lengths around them take a third varint byte)."""
  sizes = np.linspace(side[0], side[1], count).astype(int)
  return [F.encode_jpeg(F.photo(i, int(s), int(s) + i % 3), quality=70 + i % 30)
          for i, s in enumerate(sizes)]


def test_tensorflow_written_jpeg_records_decode_by_layout_as_in_full(monkeypatch):
  jpegs = _jpegs(60, side=(30, 160))
  assert min(map(len, jpegs)) < 1 << 14 < max(map(len, jpegs))
  payloads = [F.example({'image': F.bytes_feature(jpeg),
                         'label': F.int64_feature(i * 37 % 200),
                         'id': F.bytes_feature(b'img-%03d' % i)})
              for i, jpeg in enumerate(jpegs)]
  got, expected, full_decodes = _decode_encoded_all(payloads, monkeypatch=monkeypatch)
  assert got == expected
  assert got[7][0][_ENCODED_FIELDS.index('encoded')] == jpegs[7]
  assert got[7][0][_ENCODED_FIELDS.index('features')] == {'label': 7 * 37 % 200,
                                                           'id': 'img-007'}
  # one full decode per shape of the record's bytes (label and lengths one, two or
  # three bytes wide), not one per record
  assert full_decodes <= layout_decoder.MAX_ENCODED_LAYOUTS < len(payloads)


def test_encoded_records_decoded_for_reencoding_give_the_same_pixels(monkeypatch):
  images = [F.photo(i, 24 + i, 30) for i in range(6)]
  payloads = [F.example({'image': F.bytes_feature(F.encode_png(image)),
                         'label': F.int64_feature(i)}) for i, image in enumerate(images)]
  spec = decode.ImageSpec(key='image', encoding='encoded')
  got, expected, full_decodes = _decode_encoded_all(payloads, spec, monkeypatch)
  assert got == expected and full_decodes == 1
  pixels = got[4][0][_ENCODED_FIELDS.index('pixels')]
  assert pixels[2] == images[4].tobytes()


def test_a_damaged_image_by_layout_fails_as_in_full_naming_its_record():
  jpegs = _jpegs(4)
  truncated = jpegs[2][:len(jpegs[2]) // 2]  # no end marker
  not_an_image = b'\x00' * 300
  payloads = [F.example({'image': F.bytes_feature(value), 'label': F.int64_feature(1)})
              for value in (jpegs[0], jpegs[1], truncated, not_an_image, jpegs[3])]
  got, expected, _ = _decode_encoded_all(payloads)
  assert got == expected
  assert got[2][:2] == ('error', 'decode_error') and 'record 2' in got[2][2]
  assert got[3][0] == 'error' and got[4][0] != 'error'


def _field(number, body, pad=0):
  """A length-delimited field; `pad` extra varint bytes spell its length longer than
  needed (0x80 continuation bytes and a final 0x00, which protobuf's parser accepts)."""
  length = bytearray(layout_decoder._varint_bytes(len(body)))
  if pad:
    length[-1] |= 0x80
    length += b'\x80' * (pad - 1) + b'\x00'
  return bytes((number << 3 | 2,)) + bytes(length) + body


def _hand_written_example(value, pad=0):
  entry = _field(1, b'image') + _field(2, _field(1, _field(1, value, pad)))
  return _field(1, _field(1, entry))


def test_a_longer_than_needed_varint_around_the_image_keeps_no_layout(monkeypatch):
  jpegs = _jpegs(3)
  plain = _hand_written_example(jpegs[0])
  assert plain == F.example({'image': F.bytes_feature(jpegs[0])})
  padded = [_hand_written_example(jpeg, pad=2) for jpeg in jpegs]
  got, expected, full_decodes = _decode_encoded_all(padded, monkeypatch=monkeypatch)
  assert got == expected and full_decodes == 3
  assert got[1][0][_ENCODED_FIELDS.index('encoded')] == jpegs[1]


_jpeg_pool = _jpegs(6, side=(20, 140))


@settings(max_examples=300, deadline=None)
@given(_others, st.data())
def test_any_encoded_record_after_a_learned_one_decodes_as_in_full(others, data):
  """A second record with the first one's features and another image (any size: the
  lengths around it change) or bytes that are none, then its bytes damaged anywhere,
  the lengths included: the layout path gives what the full decode gives."""
  def record(values):
    features = {name: _feature(*values[name]) for name in others}
    features['image'] = F.bytes_feature(data.draw(st.one_of(
        st.sampled_from(_jpeg_pool), st.binary(min_size=1, max_size=40))))
    return F.example(features)

  _check_learned_then_varied(record, others, data, ENCODED, _decode_encoded_all,
                             _nan_safe_encoded)


def _nan_safe_encoded(outcomes):
  at = _ENCODED_FIELDS.index('features')
  return [[fields[:at] + ({k: 'nan' if v != v else v for k, v in fields[at].items()},)
           + fields[at + 1:] for fields in outcome]
          if outcome[0] != 'error' else outcome for outcome in outcomes]
