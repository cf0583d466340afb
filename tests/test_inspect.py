"""`unrecord inspect`, run as a user runs it, over every encoding and a TFDS dataset."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from tests import fixtures


def _dataset(root, name, make, compression='', count=4):
  path = os.path.join(root, name)
  fixtures.write_tfrecord(path, [make(i) for i in range(count)], compression)
  return path


@pytest.fixture(scope='module')
def datasets(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('inspect'))

  def tensor(i):
    return fixtures.example({
        'image': fixtures.bytes_feature(fixtures.serialized_tensor(
            (fixtures.photo(i, 20, 16) / 255.0).astype(np.float32))),
        'label': fixtures.int64_feature(i % 2), 'id': fixtures.bytes_feature(b'r%d' % i)})

  def raw(i):
    return fixtures.example({
        'image/raw': fixtures.bytes_feature(fixtures.photo(i, 20, 16).tobytes()),
        'image/shape': fixtures.int64_feature(20, 16, 3),
        'image/class/label': fixtures.int64_feature(i),
        'image/filename': fixtures.bytes_feature(b'photo%d.jpg' % i)})

  def numeric_list(i):
    return fixtures.example({
        'pixels': fixtures.int64_feature(*fixtures.gray_photo(28, 28, i).ravel()),
        'height': fixtures.int64_feature(28), 'width': fixtures.int64_feature(28),
        'target': fixtures.int64_feature(i)})

  def encoded(i):
    return fixtures.example({
        'image/encoded': fixtures.bytes_feature(fixtures.encode_jpeg(fixtures.photo(i))),
        'image/class/label': fixtures.int64_feature(i), 'key': fixtures.int64_feature(100 + i)})

  def batched(i):
    batch = np.stack([fixtures.photo(i + k, 12, 10) for k in range(4)]).transpose(0, 3, 1, 2)
    return fixtures.example({'frames': fixtures.bytes_feature(
        fixtures.serialized_tensor(batch))})

  return {
      'tensor': _dataset(root, 'tensor.tfrecord', tensor),
      'raw': _dataset(root, 'raw.tfrecord', raw),
      'list': _dataset(root, 'list.tfrecord', numeric_list),
      'encoded': _dataset(root, 'encoded.tfrecord', encoded),
      'batched': _dataset(root, 'batched.tfrecord', batched),
      'gzip': _dataset(root, 'tensor.tfrecord.gz', tensor, 'GZIP'),
      'root': root,
  }


def _inspect_json(unrecord, *args):
  result = unrecord('inspect', *args, '--json', check=True)
  return json.loads(result.stdout)  # exactly one JSON object, nothing else on stdout


@pytest.mark.parametrize('name,image,label_key,id_key', [
    ('tensor', {'key': 'image', 'encoding': 'tensor', 'dtype': 'float32',
                'shape': [20, 16, 3], 'layout': 'hwc'}, 'label', 'id'),
    ('gzip', {'key': 'image', 'encoding': 'tensor', 'dtype': 'float32',
              'shape': [20, 16, 3], 'layout': 'hwc'}, 'label', 'id'),
    ('raw', {'key': 'image/raw', 'encoding': 'raw', 'dtype': 'uint8',
             'shape': [20, 16, 3], 'layout': 'hwc'}, 'image/class/label', 'image/filename'),
    ('list', {'key': 'pixels', 'encoding': 'list', 'dtype': 'int64', 'shape': [28, 28],
              'layout': 'hw'}, 'target', None),
    ('encoded', {'key': 'image/encoded', 'encoding': 'encoded', 'dtype': 'uint8',
                 'shape': [48, 40, 3], 'layout': 'hwc', 'format': 'jpeg'},
     'image/class/label', 'key'),
    ('batched', {'key': 'frames', 'encoding': 'tensor', 'dtype': 'uint8',
                 'shape': [4, 3, 12, 10], 'layout': 'nchw'}, None, None),
])
def test_inspect_json_detects_each_encoding(unrecord, datasets, name, image, label_key,
                                            id_key):
  found = _inspect_json(unrecord, '--input', datasets[name])
  assert found['records_sampled'] == 4
  for field, value in image.items():
    assert found['image'][field] == value, field
  low, high = found['image']['value_range']
  assert 0 <= low < high <= (1 if image['dtype'] == 'float32' else 255)
  assert found['label_key'] == label_key and found['id_key'] == id_key
  assert found['label_names'] is None
  assert found['features'][image['key']]['kind'] in ('bytes', 'int64')


def test_inspect_value_range_is_the_observed_extent(unrecord, datasets):
  found = _inspect_json(unrecord, '--input', datasets['tensor'])
  pixels = np.concatenate([fixtures.photo(i, 20, 16).ravel() for i in range(4)]) / 255.0
  assert found['image']['value_range'] == pytest.approx(
      [pixels.min(), pixels.max()], abs=1e-6)


def test_inspect_reads_several_patterns_and_a_limit(unrecord, datasets):
  found = _inspect_json(unrecord, '--input', f'{datasets["tensor"]},{datasets["gzip"]}',
                        '--limit', '6')
  assert found['records_sampled'] == 6


def test_explicit_keys_win_over_detection(unrecord, datasets):
  found = _inspect_json(unrecord, '--input', datasets['raw'], '--label_key',
                        'image/class/label', '--id_key', 'image/class/label')
  assert found['id_key'] == 'image/class/label'


def test_wrong_image_key_lists_the_features(unrecord, datasets):
  result = unrecord('inspect', '--input', datasets['encoded'], '--image_key', 'img')
  assert result.returncode == 2
  assert "image feature 'img' not found" in result.stderr
  assert 'image/encoded (bytes[1])' in result.stderr and 'key (int64[1])' in result.stderr
  assert "likely image feature is 'image/encoded'" in result.stderr


def test_nothing_matched_names_the_pattern_and_the_folder(unrecord, datasets):
  result = unrecord('inspect', '--input', os.path.join(datasets['root'], 'nope-*.tfrecord'))
  assert result.returncode == 2
  assert 'nope-*.tfrecord' in result.stderr and 'tensor.tfrecord' in result.stderr


def test_human_output_shows_the_table_and_schema(unrecord, datasets):
  result = unrecord('inspect', '--input', datasets['raw'], check=True)
  assert 'feature' in result.stdout and 'samples' in result.stdout
  assert "image/filename     bytes  1" in result.stdout
  assert 'image:  key=image/raw  encoding=raw  dtype=uint8  shape=[20, 16, 3]' in \
      result.stdout


def test_contact_sheet_is_a_real_picture(unrecord, datasets, tmp_path):
  sheet = str(tmp_path / 'sheet.png')
  unrecord('inspect', '--input', datasets['encoded'], '--contact_sheet', sheet,
           check=True)
  image = np.asarray(Image.open(sheet).convert('RGB'))
  assert image.shape[0] >= 128 and image.shape[1] >= 4 * 128
  cell = image[4:132, 4:132].astype(float)
  assert cell.std() > 10  # a photo, not a flat fill


def test_tfds_prepared_folder_gives_class_names_and_splits(unrecord, tfds_dataset):
  found = _inspect_json(unrecord, '--input', tfds_dataset)
  assert found['label_names'] == ['astronaut', 'coffee', 'chelsea']
  assert found['label_key'] == 'label' and found['image']['key'] == 'image'
  assert found['image']['format'] == 'png' and found['image']['shape'] == [24, 20, 3]
  assert found['splits'] == ['test', 'train'] and found['tfds_name'] == 'tiny_photos'
  assert found['records_sampled'] == 9


def test_detection_skips_a_broken_first_record():
  from transforms.images import schema
  from transforms.inputs.tfrecord import RecordRef
  broken = fixtures.example({'label': fixtures.int64_feature(1)})
  good = fixtures.example({'image': fixtures.bytes_feature(fixtures.encode_png(
      fixtures.photo(0, 8, 8))), 'label': fixtures.int64_feature(2)})
  found = schema.detect_schema([(RecordRef('f', 0, 0), broken), (RecordRef('f', 1, 9), good)])
  assert found.image.key == 'image' and found.label_key == 'label'
  assert len(found.failures) == 1 and 'label (int64[1])' in found.failures[0]
