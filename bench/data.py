"""The benchmark's datasets, written by TensorFlow from crops of real photographs.

Five datasets in the shapes of work people have (issue 7):

  a  224x224x3 float32 in [0,1], `tf.io.serialize_tensor` in a tf.train.Example,
     8 shards                                                          -> PNG
  b  the same pixels as raw uint8 bytes + shape, in 8 shards           -> PNG, JPEG q90
  c  28x28 grayscale uint8 (MNIST-sized), raw bytes + shape, 4 shards  -> PNG
  d  TFDS-style encoded JPEG (`image` + `label`), 8 shards             -> JPEG passthrough
  e  dataset a as ONE file                                              -> PNG, for splitting

The photographs are scikit-image's bundled ones (no download). Every crop is distinct (a
random window, sometimes mirrored), so the encoders see real, varied content. Datasets
are cached under the data folder and rebuilt only when their size changes.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
from typing import Dict, Iterator, List, Optional

import numpy as np

from transforms.inputs import tfrecord

PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'immunohistochemistry',
          'hubble_deep_field', 'retina')
GRAY_PHOTOS = ('camera', 'coins', 'moon', 'clock', 'cell', 'brick', 'gravel', 'grass')
SIZE = 224
GRAY_SIZE = 28


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One benchmark dataset: where its shards are and what they hold."""
  name: str
  kind: str  # tensor_f32 | raw_u8 | gray_u8 | jpeg
  folder: str
  count: int
  shards: int

  @property
  def pattern(self) -> str:
    return os.path.join(self.folder, '*.tfrecord*')

  def files(self) -> List[str]:
    return sorted(os.path.join(self.folder, name) for name in os.listdir(self.folder)
                  if '.tfrecord' in name)

  def payload_bytes(self) -> int:
    return sum(os.path.getsize(path) for path in self.files())


def _photos(gray: bool = False) -> List[np.ndarray]:
  import skimage.color
  import skimage.data
  photos = [np.asarray(getattr(skimage.data, name)())[:, :, :3] for name in PHOTOS]
  if gray:
    photos = [(skimage.color.rgb2gray(image) * 255).round().astype(np.uint8)
              for image in photos]
    photos += [np.asarray(getattr(skimage.data, name)()) for name in GRAY_PHOTOS]
  return photos


def crops(count: int, size: int, *, gray: bool = False, seed: int = 0
          ) -> Iterator[np.ndarray]:
  """`count` distinct size x size crops of the photographs, uint8."""
  rng = np.random.default_rng(seed)
  photos = _photos(gray)
  for i in range(count):
    photo = photos[i % len(photos)]
    top = int(rng.integers(0, photo.shape[0] - size + 1))
    left = int(rng.integers(0, photo.shape[1] - size + 1))
    crop = photo[top:top + size, left:left + size]
    if rng.integers(0, 2):
      crop = crop[:, ::-1]
    yield np.ascontiguousarray(crop)


def _shard_paths(folder: str, shards: int) -> List[str]:
  return [os.path.join(folder, f'train.tfrecord-{i:05d}-of-{shards:05d}')
          for i in range(shards)]


def _write_sharded(folder: str, shards: int, payloads: Iterator[bytes], count: int):
  import tensorflow as tf
  os.makedirs(folder, exist_ok=True)
  writers = [tf.io.TFRecordWriter(path) for path in _shard_paths(folder, shards)]
  per_shard = -(-count // shards)
  for i, payload in enumerate(payloads):
    writers[i // per_shard].write(payload)
  for writer in writers:
    writer.close()


def _example(features: Dict[str, object]) -> bytes:
  import tensorflow as tf
  feature = {}
  for key, value in features.items():
    if isinstance(value, bytes):
      feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
    else:
      feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=list(value)))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _tensor_payloads(count: int) -> Iterator[bytes]:
  import tensorflow as tf
  for i, crop in enumerate(crops(count, SIZE)):
    tensor = tf.io.serialize_tensor(tf.constant(crop.astype(np.float32) / 255)).numpy()
    yield _example({'image': tensor, 'label': [i % 10]})


def _raw_payloads(count: int, size: int, gray: bool, seed: int = 0) -> Iterator[bytes]:
  for i, crop in enumerate(crops(count, size, gray=gray, seed=seed)):
    shape = crop.shape if crop.ndim == 3 else crop.shape + (1,)
    yield _example({'image/raw': crop.tobytes(), 'image/shape': shape, 'label': [i % 10]})


def _jpeg_payloads(count: int) -> Iterator[bytes]:
  import tensorflow as tf
  for i, crop in enumerate(crops(count, SIZE)):
    jpeg = tf.io.encode_jpeg(tf.constant(crop), quality=90).numpy()
    yield _example({'image': jpeg, 'label': [i % 10]})


def build(root: str, count: int = 4000, gray_count: int = 60000,
          only: Optional[str] = None) -> Dict[str, Dataset]:
  """Writes (or reuses) the five datasets under `root` (or only the one named `only`);
  returns them by name."""
  datasets = {
      'a': Dataset('a', 'tensor_f32', os.path.join(root, 'a_float32'), count, 8),
      'b': Dataset('b', 'raw_u8', os.path.join(root, 'b_raw_uint8'), count, 8),
      'c': Dataset('c', 'gray_u8', os.path.join(root, 'c_gray28'), gray_count, 4),
      'd': Dataset('d', 'jpeg', os.path.join(root, 'd_jpeg'), count, 8),
      'e': Dataset('e', 'tensor_f32', os.path.join(root, 'e_one_file'), count, 1),
  }
  writers = {
      'a': lambda: _tensor_payloads(count),
      'b': lambda: _raw_payloads(count, SIZE, gray=False),
      'c': lambda: _raw_payloads(gray_count, GRAY_SIZE, gray=True, seed=1),
      'd': lambda: _jpeg_payloads(count),
      'e': lambda: _tensor_payloads(count),
  }
  if only is not None:
    datasets = {only: datasets[only]}
  for name, dataset in datasets.items():
    stamp = os.path.join(dataset.folder, '_dataset.json')
    expected = {k: v for k, v in dataclasses.asdict(dataset).items() if k != 'folder'}
    if os.path.exists(stamp):
      with open(stamp) as f:
        if json.load(f) == expected:
          continue
    if os.path.isdir(dataset.folder):
      for path in dataset.files():
        os.remove(path)
    _write_sharded(dataset.folder, dataset.shards, writers[name](), dataset.count)
    with open(stamp, 'w') as f:
      json.dump(expected, f)
  return datasets


def replicated(dataset: Dataset, folder: str, copies: int) -> Dataset:
  """`copies` x the dataset as symlinks to its shards (more images, no extra disk)."""
  os.makedirs(folder, exist_ok=True)
  for path in os.listdir(folder):
    os.remove(os.path.join(folder, path))
  for copy in range(copies):
    for i, path in enumerate(dataset.files()):
      os.symlink(os.path.abspath(path),
                 os.path.join(folder, f'copy{copy:02d}.tfrecord-{i:05d}'))
  return Dataset(f'{dataset.name}x{copies}', dataset.kind, folder,
                 dataset.count * copies, dataset.shards * copies)


def subset(dataset: Dataset, folder: str, shards: int) -> Dataset:
  """The first `shards` shards of a dataset, as symlinks."""
  os.makedirs(folder, exist_ok=True)
  for path in os.listdir(folder):
    os.remove(os.path.join(folder, path))
  files = dataset.files()[:shards]
  for path in files:
    os.symlink(os.path.abspath(path), os.path.join(folder, os.path.basename(path)))
  return Dataset(f'{dataset.name}[:{shards}]', dataset.kind, folder,
                 dataset.count * shards // dataset.shards, shards)


def head(dataset: Dataset, folder: str, records: int) -> Dataset:
  """The first `records` records of a one-file dataset, as one file of their own.

  Written frame by frame as the reader gives them, so the file is the big one's start:
  same record size and structure, fewer images.
  """
  source, = dataset.files()
  shutil.rmtree(folder, ignore_errors=True)
  os.makedirs(folder)

  def payloads(stream):
    for slot in itertools.islice(tfrecord.read_records(stream, source), records):
      if isinstance(slot, Exception):
        raise slot  # a damaged benchmark input: rebuild it (rm -r the data folder)
      yield slot[1]

  with open(source, 'rb') as stream:
    tfrecord.write_tfrecord(os.path.join(folder, os.path.basename(source)),
                            payloads(stream))
  return Dataset(f'{dataset.name}[:{records}]', dataset.kind, folder, records, 1)
