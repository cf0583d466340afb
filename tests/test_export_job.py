"""The export job run as a user runs it: a subprocess over TensorFlow-written TFRecords."""

import hashlib
import json
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tests import fixtures
from tests import outputs
from transforms.inputs import tfrecord

# Any attempt to reach the network (e.g. DirectRunner fetching Prism) fails fast here.
OFFLINE = {'http_proxy': 'http://127.0.0.1:9', 'https_proxy': 'http://127.0.0.1:9',
           'HTTP_PROXY': 'http://127.0.0.1:9', 'HTTPS_PROXY': 'http://127.0.0.1:9'}
METADATA = {'_manifest/part-00000-of-00001.jsonl', '_manifest/_parts.json', '_dead_letter.jsonl', '_dead_letter.tfrecord',
            '_report.json', '_report.html', '_SUCCESS', '_unrecord_run.json'}


def _export(unrecord, *args, expect=0):
  result = unrecord('export', *args, env=OFFLINE)
  assert result.returncode == expect, result.stderr[-4000:]
  return result


def _files(root):
  """Every file under `root` but the run logs in `_logs/` (tests/test_logs.py)."""
  found = set()
  for folder, _, names in os.walk(root):
    for name in names:
      found.add(os.path.relpath(os.path.join(folder, name), root))
  return {f for f in found if not f.startswith('_logs/')}


def _manifest(root):
  return outputs.manifest_rows(root)


def _read_rgb(path):
  image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
  return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image


@pytest.fixture(scope='module')
def float_shards(tmp_path_factory):
  root = tmp_path_factory.mktemp('float_shards')
  photos = {}
  for shard in range(2):
    payloads = []
    for i in range(3):
      photo = fixtures.photo(shard * 3 + i, 40, 32)
      photos[(f'train-{shard:05d}-of-00002', i)] = photo
      payloads.append(fixtures.example({
          'image': fixtures.bytes_feature(fixtures.serialized_tensor(
              (photo / 255.0).astype(np.float32))),
          'id': fixtures.bytes_feature(f's{shard}r{i}'.encode()),
          'label': fixtures.int64_feature(i % 2)}))
    fixtures.write_tfrecord(str(root / f'train-{shard:05d}-of-00002.tfrecord'), payloads)
  return str(root), photos


def test_float_tensors_become_exact_pngs_with_manifest_and_report(unrecord, float_shards,
                                                                   tmp_path):
  source, photos = float_shards
  out = str(tmp_path / 'out')
  result = _export(unrecord, '--input', source, '--output', out)
  assert 'prism' not in result.stderr.lower()
  expected = {f'{stem}-{i:06d}.png' for stem, i in photos}
  assert _files(out) == expected | METADATA
  for (stem, i), photo in photos.items():
    assert np.array_equal(_read_rgb(os.path.join(out, f'{stem}-{i:06d}.png')), photo)
  rows = _manifest(out)
  assert {r['path'] for r in rows} == expected
  for row in rows:
    data = open(os.path.join(out, row['path']), 'rb').read()
    assert row['bytes'] == len(data)
    assert row['sha256'] == hashlib.sha256(data).hexdigest()
    assert row['dtype_in'] == 'float32' and row['dtype_out'] == 'uint8'
    assert row['shape_in'] == [40, 32, 3] and row['value_range'] == [0.0, 1.0]
    assert row['id'] == f's{row["source"][-19]}r{row["index"]}'
  report = json.load(open(os.path.join(out, '_report.json')))
  assert (report['written'], report['failed'], report['success']) == (6, 0, True)
  assert os.path.getsize(os.path.join(out, '_dead_letter.jsonl')) == 0
  assert 'written 6' in result.stderr and 'failed 0' in result.stderr


def test_tfds_shard_names_without_a_dataset_prefix_do_not_collide(unrecord, tmp_path):
  """'train.tfrecord-0000N-of-00003' shards: the default names keep the shard number."""
  photos = {}
  for shard in range(3):
    name = f'train.tfrecord-{shard:05d}-of-00003'
    payloads = []
    for i in range(2):
      photos[(f'train-{shard:05d}', i)] = photo = fixtures.photo(shard * 2 + i, 24, 20)
      payloads.append(fixtures.example({'image': fixtures.bytes_feature(
          fixtures.serialized_tensor(photo))}))
    fixtures.write_tfrecord(str(tmp_path / 'in' / name), payloads)
  out = str(tmp_path / 'out')
  _export(unrecord, '--input', str(tmp_path / 'in'), '--output', out)
  assert _files(out) == {f'{stem}-{i:06d}.png' for stem, i in photos} | METADATA
  for (stem, i), photo in photos.items():
    assert np.array_equal(_read_rgb(os.path.join(out, f'{stem}-{i:06d}.png')), photo)


def test_templates_with_formats_and_fields(unrecord, float_shards, tmp_path):
  source, photos = float_shards
  out = str(tmp_path / 'named')
  names = tmp_path / 'names.txt'
  names.write_text('even\nodd\n')
  _export(unrecord, '--input', source, '--output', out, '--name_template',
          '{split}/{label_name}/{id}-{label}-{index:04d}.{ext}', '--format', 'bmp',
          '--label_names', str(names))
  images = _files(out) - METADATA
  assert images == {f'train/{("even", "odd")[i % 2]}/s{s}r{i}-{i % 2}-{i:04d}.bmp'
                    for s in range(2) for i in range(3)}
  assert {r['label_name'] for r in _manifest(out)} == {'even', 'odd'}


def test_unknown_template_field_fails_before_the_run(unrecord, float_shards, tmp_path):
  source, _ = float_shards
  out = str(tmp_path / 'never')
  result = _export(unrecord, '--input', source, '--output', out, '--name_template',
                   '{labl}/{index}.{ext}', expect=2)
  assert '{labl}' in result.stderr and '{label}' in result.stderr
  assert '{id}' in result.stderr and not os.path.exists(out)


def test_an_input_file_name_that_is_not_utf8_fails_before_the_run(unrecord, float_shards,
                                                                  tmp_path):
  # A Latin-1 file name: Python holds its 0xff byte as a lone surrogate, which no UTF-8
  # manifest line can hold; it used to crash the workers after images were written.
  source, _ = float_shards
  folder = tmp_path / 'latin1'
  folder.mkdir()
  first = sorted(os.listdir(source))[0]
  os.link(os.path.join(source, first), os.fsencode(folder) + b'/caf\xe9-' + first.encode())
  out = str(tmp_path / 'never')
  result = _export(unrecord, '--input', str(folder), '--output', out, expect=2)
  assert 'not valid UTF-8' in result.stderr and 'caf\\xe9-' + first in result.stderr
  assert 'Traceback' not in result.stderr and not os.path.exists(out)


def test_unknown_argument_is_an_error_with_a_suggestion(unrecord, float_shards, tmp_path):
  source, _ = float_shards
  result = _export(unrecord, '--input', source, '--output', str(tmp_path / 'x'),
                   '--fromat', 'jpeg', expect=2)
  assert "'--fromat'" in result.stderr and 'did you mean --format' in result.stderr


def test_skip_existing_rerun_writes_nothing(unrecord, float_shards, tmp_path):
  source, _ = float_shards
  out = str(tmp_path / 'again')
  _export(unrecord, '--input', source, '--output', out, '--skip_existing')
  before = {p: (os.stat(os.path.join(out, p)).st_mtime_ns,
                open(os.path.join(out, p), 'rb').read())
            for p in _files(out) - METADATA}
  manifest = outputs.manifest_bytes(out)
  _export(unrecord, '--input', source, '--output', out, '--skip_existing')
  assert outputs.manifest_bytes(out) == manifest
  after = {p: (os.stat(os.path.join(out, p)).st_mtime_ns,
               open(os.path.join(out, p), 'rb').read())
           for p in _files(out) - METADATA}
  assert after == before and len(after) == 6
  report = json.load(open(os.path.join(out, '_report.json')))
  assert (report['written'], report['skipped']) == (0, 6)


def test_jpeg_passthrough_is_byte_identical(unrecord, tmp_path):
  jpegs = [fixtures.encode_jpeg(fixtures.photo(i, 64, 48), quality=85) for i in range(4)]
  path = fixtures.write_tfrecord(str(tmp_path / 'enc.tfrecord'), [
      fixtures.example({'image/encoded': fixtures.bytes_feature(j),
                        'image/filename': fixtures.bytes_feature(b'img%d.jpg' % i)})
      for i, j in enumerate(jpegs)])
  out = str(tmp_path / 'out')
  _export(unrecord, '--input', path, '--output', out, '--format', 'jpeg',
          '--name_template', '{image/filename}')
  for i, jpeg in enumerate(jpegs):
    assert open(os.path.join(out, f'img{i}.jpg'), 'rb').read() == jpeg
  assert all(r['passthrough'] for r in _manifest(out))


def test_16bit_depth_maps_stay_16bit(unrecord, tmp_path):
  depth = fixtures.photo_16bit()
  path = fixtures.write_tfrecord(str(tmp_path / 'depth.tfrecord'), [
      fixtures.example({'depth/raw': fixtures.bytes_feature(depth.tobytes()),
                        'depth/shape': fixtures.int64_feature(*depth.shape),
                        'depth/dtype': fixtures.bytes_feature(b'uint16')})])
  out = str(tmp_path / 'out')
  _export(unrecord, '--input', path, '--output', out)
  written = cv2.imread(os.path.join(out, 'depth-000000.png'), cv2.IMREAD_UNCHANGED)
  assert written.dtype == np.uint16 and np.array_equal(written, depth)


def test_bad_records_are_dead_lettered_and_good_ones_written(unrecord, tmp_path):
  good = [fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(
      fixtures.photo(i, 20, 16)))}) for i in range(3)]
  nan = (fixtures.photo(4, 20, 16) / 255.0).astype(np.float32)
  nan[3, 3, 0] = np.nan
  missing = fixtures.example({'label': fixtures.int64_feature(1)})
  nan_record = fixtures.example({'image': fixtures.bytes_feature(
      fixtures.serialized_tensor(nan))})
  frames = [tfrecord.encode_record(p) for p in (good[0], missing, good[1], nan_record,
                                                good[2], good[0])]
  data = bytearray(b''.join(frames))
  last = sum(len(f) for f in frames[:-1])
  data[last + 30] ^= 0xFF  # damage the last record's payload
  path = str(tmp_path / 'mixed.tfrecord')
  open(path, 'wb').write(bytes(data))
  out = str(tmp_path / 'out')
  result = _export(unrecord, '--input', path, '--output', out, '--value_range', '0,255',
                   expect=1)
  assert 'failed 3' in result.stderr
  assert _files(out) - METADATA == {'mixed-000000.png', 'mixed-000002.png',
                                    'mixed-000004.png'}
  assert not os.path.exists(os.path.join(out, '_SUCCESS'))
  rows = [json.loads(line) for line in open(os.path.join(out, '_dead_letter.jsonl'))]
  assert [(r['reason'], r['index'], r['offset'], r['replayable']) for r in rows] == [
      ('missing_feature', 1, len(frames[0]), True),
      ('non_finite', 3, sum(len(f) for f in frames[:3]), True),
      ('crc_mismatch', 5, last, False)]
  assert all(r['source'] == path and r['message'] for r in rows)
  replay = fixtures.read_with_tf(os.path.join(out, '_dead_letter.tfrecord'))
  assert replay == [missing, nan_record]
  _export(unrecord, '--input', path, '--output', out, '--value_range', '0,255',
          '--max_failures', '3')
  assert os.path.exists(os.path.join(out, '_SUCCESS'))


def test_class_folders_load_in_keras_one_root_per_split(unrecord, tfds_dataset, tmp_path):
  out = str(tmp_path / 'classes')
  result = _export(unrecord, '--input', tfds_dataset, '--output', out, '--layout', 'class')
  # TFDS's own metadata beside the shards is skipped without a word (it is expected
  # there); the report still lists it.
  assert 'warning' not in (result.stdout + result.stderr).lower(), result.stderr
  with open(os.path.join(out, '_report.json')) as f:
    skipped = {os.path.basename(url) for url in json.load(f)['skipped_inputs']}
  assert {'dataset_info.json', 'features.json', 'label.labels.txt'} <= skipped, skipped
  # Train and test images never share a class folder: each split is its own root.
  assert {tuple(p.split('/')[:2]) for p in _files(out) - METADATA} == {
      (split, name) for split in ('train', 'test')
      for name in ('astronaut', 'chelsea', 'coffee')}
  rows = _manifest(out)
  assert all(r['path'].startswith(('train/', 'test/')) and
             ('-train.' in r['source']) == r['path'].startswith('train/') for r in rows)
  for split, count in (('train', 6), ('test', 3)):
    dataset = tf.keras.utils.image_dataset_from_directory(
        os.path.join(out, split), image_size=(24, 20), batch_size=32, shuffle=False)
    assert dataset.class_names == ['astronaut', 'chelsea', 'coffee']
    images, labels = next(iter(dataset))
    assert images.shape[0] == count
    assert sorted(np.bincount(labels.numpy())) == [count // 3] * 3
  assert all(r['passthrough'] for r in rows)  # TFDS PNG -> PNG, untouched


def test_help_shows_unrecord_options_before_beam(unrecord):
  result = unrecord('export', '--help', check=True)
  text = result.stdout
  assert text.index('--input') < text.index('--output') < text.index('Apache Beam options')
  assert '--runner' in text and '--name_template' in text


def test_imagenet_normalized_photos_with_mean_imagenet_come_back_exact(unrecord, tmp_path):
  # docs/export.md's recipe: float32 photos stored as (x / 255 - mean) / std per channel. The
  # value range must be settled per channel on the un-normalized sample ([0, 1] here),
  # not from the global min and max (which gave 0..255 and near-black images).
  mean = np.array([0.485, 0.456, 0.406])
  std = np.array([0.229, 0.224, 0.225])
  photos = [fixtures.photo(i, 32, 32) for i in range(4)]
  stored = [((p / 255.0 - mean) / std).astype(np.float32) for p in photos]
  source = fixtures.write_tfrecord(str(tmp_path / 'feats.tfrecord'), [
      fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(x))})
      for x in stored])
  out = tmp_path / 'images'
  result = _export(unrecord, '--input', source, '--output', str(out), '--mean', 'imagenet')
  rows = sorted(outputs.manifest_rows(out),
                key=lambda r: r['index'])
  assert [r['value_range'] for r in rows] == [[0, 1]] * 4, result.stderr[-2000:]
  for row, x, photo in zip(rows, stored, photos):
    expected = np.rint(np.clip(x.astype(np.float64) * std + mean, 0, 1) * 255)
    pixels = cv2.cvtColor(cv2.imread(str(out / row['path'])), cv2.COLOR_BGR2RGB)
    assert np.array_equal(pixels, expected.astype(np.uint8))
    assert np.abs(pixels.astype(int) - photo).max() <= 1  # the photo itself, back
