"""Decoding images from TensorFlow-written Examples, bit-exact against TensorFlow."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from tests import fixtures
from transforms import errors
from transforms.images import decode
from transforms.inputs.tfrecord import RecordRef
from transforms.records import example as example_lib
from transforms.records import tensor_proto

REF = RecordRef('mem.tfrecord', 3, 120)
DTYPES = ['uint8', 'int8', 'uint16', 'int16', 'uint32', 'int32', 'int64', 'float16',
          'bfloat16', 'float32', 'float64', 'bool']


def _photo_as(dtype: str, shape_kind: str) -> tf.Tensor:
  """A real photo as a TF tensor of `dtype` with rank 2 (HW), 3 (HWC) or 4 (NHWC)."""
  pixels = fixtures.photo(1, 20, 16).astype(np.float64)
  if shape_kind == 'hw':
    pixels = pixels[:, :, 0]
  elif shape_kind == 'nhwc':
    pixels = np.stack([pixels, fixtures.photo(2, 20, 16)])
  if dtype == 'bool':
    return tf.constant(pixels > 127)
  if dtype in ('float16', 'bfloat16', 'float32', 'float64'):
    return tf.cast(tf.constant(pixels / 255.0), dtype)
  if dtype.startswith('int') and dtype != 'int64':
    pixels = pixels - 128 if dtype == 'int8' else pixels * 50 - 6000
  elif dtype in ('uint16', 'uint32'):
    pixels = pixels * 257
  return tf.cast(tf.constant(pixels), dtype)


def _as_float32_if_bfloat16(array: np.ndarray) -> np.ndarray:
  return array.astype(np.float32) if array.dtype.name == 'bfloat16' else array


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('shape_kind', ['hw', 'hwc', 'nhwc'])
def test_serialized_tensors_decode_bit_exact(dtype, shape_kind):
  tensor = _photo_as(dtype, shape_kind)
  payload = fixtures.example({'image': fixtures.bytes_feature(
      tf.io.serialize_tensor(tensor).numpy()), 'label': fixtures.int64_feature(7)})
  expected = _as_float32_if_bfloat16(tf.io.parse_tensor(
      tf.io.parse_single_example(payload, {'image': tf.io.FixedLenFeature([], tf.string)}
                                 )['image'], tensor.dtype).numpy())
  images = decode.decode_record(REF, payload, decode.ImageSpec())
  parts = list(expected) if shape_kind == 'nhwc' else [expected]
  assert len(images) == len(parts)
  for n, (image, part) in enumerate(zip(images, parts)):
    assert image.pixels.dtype == part.dtype
    assert image.pixels.tobytes() == part.tobytes()
    assert image.source_dtype == dtype and image.encoding == 'tensor'
    assert image.axes == ('hw' if shape_kind == 'hw' else 'hwc')
    assert (image.n, image.features, image.ref) == (n, {'label': 7}, REF)


@pytest.mark.parametrize('dtype', DTYPES)
def test_typed_value_fields_decode_like_tensorflow(dtype):
  tensor = _photo_as(dtype, 'hw')[:3, :4]
  array = tensor.numpy()
  proto = tensor_pb2.TensorProto(dtype=tensor.dtype.as_datatype_enum)
  proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
      dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape]))
  flat = array.ravel()
  if dtype in ('float16', 'bfloat16'):
    proto.half_val.extend(flat.view(np.uint16).astype(np.int32).tolist())
  else:
    field = {'float32': 'float_val', 'float64': 'double_val', 'int64': 'int64_val',
             'bool': 'bool_val', 'uint32': 'uint32_val'}.get(dtype, 'int_val')
    getattr(proto, field).extend(flat.tolist())
  expected = _as_float32_if_bfloat16(tf.make_ndarray(proto))
  decoded, name = tensor_proto.parse_tensor(proto.SerializeToString())
  assert name == dtype
  assert decoded.dtype == expected.dtype and decoded.tobytes() == expected.tobytes()


@pytest.mark.parametrize('dtype', ['uint8', 'float16', 'bfloat16', 'float32', 'int64',
                                   'uint16', 'bool'])
def test_one_value_broadcast_form(dtype):
  value = True if dtype == 'bool' else 3
  proto = tf.make_tensor_proto(value, dtype=tf.as_dtype(dtype), shape=[4, 5, 3])
  expected = _as_float32_if_bfloat16(tf.make_ndarray(proto))
  decoded, _ = tensor_proto.parse_tensor(proto.SerializeToString())
  assert decoded.shape == (4, 5, 3) and decoded.tobytes() == expected.tobytes()


def test_element_count_is_capped_before_allocation():
  proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])
  proto.tensor_shape.dim.add(size=10 ** 6)
  proto.tensor_shape.dim.add(size=10 ** 6)
  with pytest.raises(errors.DecodeError) as info:
    tensor_proto.parse_tensor(proto.SerializeToString(), max_elements=1 << 28)
  assert info.value.reason == 'too_many_pixels'


def test_content_that_does_not_fill_the_shape_is_a_shape_mismatch():
  proto = tf.make_tensor_proto(np.zeros((4, 4), np.float32))
  proto.tensor_shape.dim[0].size = 5
  with pytest.raises(errors.DecodeError) as info:
    tensor_proto.parse_tensor(proto.SerializeToString())
  assert info.value.reason == 'shape_mismatch' and '64 bytes' in str(info.value)


def test_unsupported_dtype_names_the_dtype():
  proto = tf.make_tensor_proto(np.array([[b'a', b'b']]))
  with pytest.raises(errors.DecodeError) as info:
    tensor_proto.parse_tensor(proto.SerializeToString())
  assert info.value.reason == 'unsupported_dtype' and 'string' in str(info.value)


RAW = fixtures.photo(0, 12, 10)


@pytest.mark.parametrize('features', [
    {'image/raw': fixtures.bytes_feature(RAW.tobytes()),
     'image/shape': fixtures.int64_feature(12, 10, 3)},
    {'image': fixtures.bytes_feature(RAW.tobytes()),
     'image/height': fixtures.int64_feature(12), 'image/width': fixtures.int64_feature(10),
     'image/channels': fixtures.int64_feature(3)},
    {'image_raw': fixtures.bytes_feature(RAW.tobytes()),
     'height': fixtures.int64_feature(12), 'width': fixtures.int64_feature(10),
     'depth': fixtures.int64_feature(3)},
    {'img': fixtures.bytes_feature(RAW.tobytes()), 'shape': fixtures.int64_feature(12, 10, 3),
     'dtype': fixtures.bytes_feature(b'uint8')},
    {'image/raw': fixtures.bytes_feature(RAW.tobytes()),
     'image/height': fixtures.int64_feature(12), 'image/width': fixtures.int64_feature(10)},
], ids=['x_shape', 'x_hwc', 'unprefixed', 'dtype_feature', 'channels_inferred'])
def test_raw_bytes_with_shape_from_sibling_features(features):
  payload = fixtures.example(features)
  key = next(k for k in features if 'raw' in k or k in ('image', 'img'))
  expected = tf.reshape(tf.io.decode_raw(tf.io.parse_single_example(
      payload, {key: tf.io.FixedLenFeature([], tf.string)})[key], tf.uint8),
      [12, 10, 3]).numpy()
  (image,) = decode.decode_record(REF, payload, decode.ImageSpec())
  assert image.key == key and image.encoding == 'raw'
  np.testing.assert_array_equal(image.pixels, expected)


@pytest.mark.parametrize('bad', [float('inf'), float('-inf'), float('nan')])
def test_a_float_size_feature_that_is_not_finite_is_no_size(bad):
  """Such a sibling is skipped like text with no number in it (the height/width pair
  decides here); it used to escape as an OverflowError that would stop the worker."""
  payload = fixtures.example({
      'image/raw': fixtures.bytes_feature(RAW.tobytes()),
      'image/raw/shape': fixtures.float_feature(bad, 10.0, 3.0),
      'image/height': fixtures.int64_feature(12), 'image/width': fixtures.int64_feature(10)})
  (image,) = decode.decode_record(REF, payload, decode.ImageSpec(key='image/raw'))
  assert image.pixels.shape == (12, 10, 3)
  np.testing.assert_array_equal(image.pixels, RAW)


def test_raw_float32_with_dtype_feature_and_options():
  pixels = (fixtures.photo(2, 8, 6) / 255.0).astype(np.float32)
  payload = fixtures.example({
      'image/raw': fixtures.bytes_feature(pixels.tobytes()),
      'image/dtype': fixtures.bytes_feature(b'tf.float32'),
      'image/shape': fixtures.int64_feature(8, 6, 3)})
  (image,) = decode.decode_record(REF, payload, decode.ImageSpec())
  assert image.pixels.dtype == np.float32
  np.testing.assert_array_equal(image.pixels, pixels)
  bare = fixtures.example({'pixels': fixtures.bytes_feature(pixels.tobytes())})
  (image,) = decode.decode_record(
      REF, bare, decode.ImageSpec(shape=(8, 6, 3), dtype='float32'))
  np.testing.assert_array_equal(image.pixels, pixels)


def test_numeric_lists_decode_like_parse_single_example():
  gray = fixtures.gray_photo(28, 28)
  color = (fixtures.photo(3, 6, 5) / 255.0).astype(np.float32)
  ints = fixtures.example({'image': fixtures.int64_feature(*gray.ravel()),
                           'label': fixtures.int64_feature(4)})
  floats = fixtures.example({'x': fixtures.float_feature(*color.ravel()),
                             'x/shape': fixtures.int64_feature(6, 5, 3)})
  parsed = tf.io.parse_single_example(
      ints, {'image': tf.io.FixedLenFeature([784], tf.int64)})['image'].numpy()
  (image,) = decode.decode_record(REF, ints, decode.ImageSpec())
  assert image.encoding == 'list' and image.pixels.dtype == np.int64
  np.testing.assert_array_equal(image.pixels, parsed.reshape(28, 28))
  parsed = tf.io.parse_single_example(
      floats, {'x': tf.io.FixedLenFeature([90], tf.float32)})['x'].numpy()
  (image,) = decode.decode_record(REF, floats, decode.ImageSpec())
  assert image.pixels.dtype == np.float32 and image.axes == 'hwc'
  assert image.pixels.tobytes() == parsed.reshape(6, 5, 3).tobytes()


def _pil_bytes(array, fmt, **kwargs):
  out = io.BytesIO()
  Image.fromarray(array).save(out, format=fmt, **kwargs)
  return out.getvalue()


@pytest.mark.parametrize('fmt', ['png', 'png_gray', 'png_rgba', 'jpeg', 'gif', 'bmp'])
def test_encoded_images_decode_like_tf_decode_image(fmt):
  color = fixtures.photo(0, 24, 20)
  if fmt == 'png':
    data = fixtures.encode_png(color)
  elif fmt == 'png_gray':
    data = fixtures.encode_png(fixtures.gray_photo(24, 20))
  elif fmt == 'png_rgba':
    rgba = np.dstack([color, np.arange(24 * 20, dtype=np.uint8).reshape(24, 20)])
    data = fixtures.encode_png(rgba)
  elif fmt == 'jpeg':
    data = fixtures.encode_jpeg(color)
  else:
    data = _pil_bytes(color, fmt.upper())
  payload = fixtures.example({'image/encoded': fixtures.bytes_feature(data),
                              'image/class/label': fixtures.int64_feature(2)})
  if fmt == 'jpeg':  # unrecord decodes with libjpeg's accurate integer IDCT
    expected = tf.io.decode_jpeg(data, dct_method='INTEGER_ACCURATE').numpy()
  else:
    expected = tf.io.decode_image(data, expand_animations=False).numpy()
  (image,) = decode.decode_record(REF, payload, decode.ImageSpec())
  assert image.encoding == 'encoded' and image.encoded == data
  got = image.pixels if image.pixels.ndim == 3 else image.pixels[:, :, None]
  np.testing.assert_array_equal(got, expected)


def test_16bit_png_keeps_16_bits():
  depth = fixtures.photo_16bit()
  data = tf.io.encode_png(depth[:, :, None]).numpy()
  payload = fixtures.example({'image': fixtures.bytes_feature(data)})
  (image,) = decode.decode_record(REF, payload, decode.ImageSpec())
  assert image.pixels.dtype == np.uint16 and image.encoded_format == 'png'
  np.testing.assert_array_equal(image.pixels, depth)


@pytest.mark.parametrize('fmt', ['webp', 'tiff'])
def test_lossless_webp_and_tiff_decode_to_the_original_pixels(fmt):
  color = fixtures.photo(4, 16, 16)
  data = _pil_bytes(color, fmt.upper(), **({'lossless': True} if fmt == 'webp' else {}))
  (image,) = decode.decode_record(
      REF, fixtures.example({'image': fixtures.bytes_feature(data)}), decode.ImageSpec())
  assert image.encoded_format == fmt
  np.testing.assert_array_equal(image.pixels, color)


def test_several_encoded_images_in_one_feature_are_a_batch():
  frames = [fixtures.photo(i, 10, 10) for i in range(3)]
  payload = fixtures.example({'image': fixtures.bytes_feature(
      *[fixtures.encode_png(f) for f in frames])})
  images = decode.decode_record(REF, payload, decode.ImageSpec())
  assert [i.n for i in images] == [0, 1, 2] and images[0].batch_size == 3
  for image, frame in zip(images, frames):
    np.testing.assert_array_equal(image.pixels, frame)


@pytest.mark.parametrize('layout', ['nhwc', 'nchw', 'nhw'])
def test_batched_tensors_split_into_images(layout):
  batch = np.stack([fixtures.photo(i, 12, 10) for i in range(5)])  # N,H,W,C
  if layout == 'nchw':
    batch = batch.transpose(0, 3, 1, 2)
  elif layout == 'nhw':
    batch = batch[..., 0]
  payload = fixtures.example({'image': fixtures.bytes_feature(
      fixtures.serialized_tensor(batch))})
  images = decode.decode_record(REF, payload, decode.ImageSpec())
  assert len(images) == 5
  for n, image in enumerate(images):
    assert image.axes == layout[1:] and image.stored_axes == layout
    np.testing.assert_array_equal(image.pixels, batch[n])


def test_chw_is_detected_and_forced_layout_wins():
  chw = fixtures.photo(0, 12, 10).transpose(2, 0, 1)
  payload = fixtures.example({'image': fixtures.bytes_feature(
      fixtures.serialized_tensor(chw))})
  (image,) = decode.decode_record(REF, payload, decode.ImageSpec())
  assert image.axes == 'chw'
  (image,) = decode.decode_record(REF, payload, decode.ImageSpec(axes='hwc'))
  assert image.axes == 'hwc'


def test_wrong_image_key_lists_the_features_and_the_likely_image():
  payload = fixtures.example({'image/encoded': fixtures.bytes_feature(
      fixtures.encode_png(fixtures.photo())), 'image/class/label': fixtures.int64_feature(1)})
  with pytest.raises(errors.DecodeError) as info:
    decode.decode_record(REF, payload, decode.ImageSpec(key='img'))
  message = str(info.value)
  assert info.value.reason == 'missing_feature'
  assert "'img' not found" in message and 'image/encoded (bytes[1])' in message
  assert 'image/class/label (int64[1])' in message
  assert "likely image feature is 'image/encoded'" in message
  assert 'mem.tfrecord, record 3, byte 120' in message


def test_non_example_payload_is_a_proto_parse_error():
  with pytest.raises(errors.DecodeError) as info:
    decode.decode_record(REF, b'\xff\xff\xff\xff not a proto', decode.ImageSpec())
  assert info.value.reason == 'proto_parse'


def test_encoded_image_too_large_is_rejected_from_its_header():
  # A valid PNG header that claims 65535 x 65535 pixels, with no data behind it.
  import struct
  import zlib
  ihdr = struct.pack('>IIBBBBB', 65535, 65535, 8, 2, 0, 0, 0)
  chunk = b'IHDR' + ihdr
  png = (b'\x89PNG\r\n\x1a\n' + struct.pack('>I', len(ihdr)) + chunk +
         struct.pack('>I', zlib.crc32(chunk)))
  payload = fixtures.example({'image': fixtures.bytes_feature(png + b'\x00' * 16)})
  with pytest.raises(errors.DecodeError) as info:
    decode.decode_record(REF, payload, decode.ImageSpec())
  assert info.value.reason == 'too_many_pixels'


def test_own_example_writer_round_trips_through_tensorflow():
  payload = example_lib.build_example({'name': 'a', 'ids': [1, 2], 'x': np.float32(0.5),
                                       'blob': b'\x00\x01'})
  parsed = tf.train.Example.FromString(payload).features.feature
  assert parsed['name'].bytes_list.value == [b'a']
  assert list(parsed['ids'].int64_list.value) == [1, 2]
  assert list(parsed['x'].float_list.value) == [0.5]
  assert example_lib.parse_example(payload)['blob'].values == [b'\x00\x01']


def test_serialize_tensor_matches_tensorflow():
  for array in (fixtures.photo(), fixtures.photo_16bit(),
                (fixtures.photo() / 255).astype(np.float32)):
    assert tensor_proto.serialize_tensor(array) == fixtures.serialized_tensor(array)


def _length_delimited(field: int, body: bytes) -> bytes:
  assert len(body) < 128
  return bytes([field << 3 | 2, len(body)]) + body


@pytest.mark.parametrize('unknown', [
    b'\x3d' + b'\x01\x02\x03\x04',         # field 7, fixed32: not length-delimited
    _length_delimited(7, b'\xab\xcd\xef\x01'),  # field 7, length-delimited, before the values
])
def test_a_float_list_with_unknown_fields_reads_its_values(unknown):
  """protobuf keeps unknown fields in a FloatList; its values are still the packed ones
  (found by the layout property test: a damaged byte raised NotCanonical from here)."""
  floats = np.array([1.5, -2.25, 3.0], '<f4').tobytes()
  float_list = unknown + _length_delimited(1, floats)
  feature = _length_delimited(2, float_list)
  entry = _length_delimited(1, b'x') + _length_delimited(2, feature)
  payload = _length_delimited(1, _length_delimited(1, entry))
  values = example_lib.parse_example(payload)['x'].values
  assert values.dtype == np.float32 and values.tolist() == [1.5, -2.25, 3.0]
