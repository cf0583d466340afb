"""Test inputs written by TensorFlow from real photographs (scikit-image ships them)."""

from __future__ import annotations

import functools
import os
from typing import Dict, Iterable, List

import numpy as np
import skimage.data
import tensorflow as tf

_PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'immunohistochemistry')


@functools.lru_cache(maxsize=None)
def _photograph(name: str) -> np.ndarray:
  """scikit-image's photograph, read once: each call of its loader decodes the file
  again (10 ms), and suites of thousands of crops spent a minute on it. Read-only, so a
  test cannot change what the next one crops."""
  image = getattr(skimage.data, name)()
  image.flags.writeable = False
  return image


def photo(index: int = 0, height: int = 48, width: int = 40) -> np.ndarray:
  """An HxWx3 uint8 crop of a real photograph (different photos by index)."""
  image = _photograph(_PHOTOS[index % len(_PHOTOS)])
  top = (index * 7) % (image.shape[0] - height)
  left = (index * 11) % (image.shape[1] - width)
  return image[top:top + height, left:left + width, :3].copy()  # C order, writable


def gray_photo(height: int = 28, width: int = 28, index: int = 0) -> np.ndarray:
  image = _photograph('camera')
  top, left = 100 + index * 5, 200 + index * 3
  return image[top:top + height, left:left + width].copy()


def photo_16bit(height: int = 32, width: int = 32) -> np.ndarray:
  """A 16-bit image built from two real photographs: camera in the high byte, moon low.

  scikit-image ships no 16-bit photograph offline; this keeps real image structure in
  all 16 bits, so a path that drops the low byte is caught.
  """
  high = _photograph('camera')[100:100 + height, 200:200 + width].astype(np.uint16)
  low = _photograph('moon')[200:200 + height, 200:200 + width].astype(np.uint16)
  return (high << 8) | low


def bytes_feature(*values: bytes) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def int64_feature(*values) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def float_feature(*values) -> tf.train.Feature:
  return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def example(features: Dict[str, tf.train.Feature]) -> bytes:
  return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def serialized_tensor(array: np.ndarray) -> bytes:
  return tf.io.serialize_tensor(tf.constant(array)).numpy()


def write_tfrecord(path: str, payloads: Iterable[bytes], compression: str = '') -> str:
  """Writes with tf.io.TFRecordWriter; compression '' (none), 'GZIP' or 'ZLIB'."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with tf.io.TFRecordWriter(path, options=compression or None) as writer:
    for payload in payloads:
      writer.write(payload)
  return path


def read_with_tf(path: str, compression: str = '') -> List[bytes]:
  return [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type=compression)]


def encode_png(array: np.ndarray) -> bytes:
  return tf.io.encode_png(array if array.ndim == 3 else array[:, :, None]).numpy()


def encode_jpeg(array: np.ndarray, quality: int = 95) -> bytes:
  return tf.io.encode_jpeg(array, quality=quality).numpy()
