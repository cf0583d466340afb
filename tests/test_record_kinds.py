"""Records that are not a tf.train.Example, through the whole job: bare serialized
tensors, bare encoded images, and tf.train.SequenceExample clips. TensorFlow writes
every input; each test checks what a user checks (pixels, bytes, names, manifest rows,
dead letters, `_SUCCESS`, `inspect`'s JSON)."""

import json
import os

import cv2
import numpy as np
import tensorflow as tf

from tests import fixtures
from tests.test_export_job import METADATA, OFFLINE, _export, _files, _manifest, _read_rgb
from transforms.inputs import tfrecord


def _inspect(unrecord, path, *args):
  result = unrecord('inspect', '--input', path, '--json', *args, env=OFFLINE, check=True)
  return json.loads(result.stdout)


def _sequence(context, lists):
  return tf.train.SequenceExample(
      context=tf.train.Features(feature=context),
      feature_lists=tf.train.FeatureLists(feature_list={
          name: tf.train.FeatureList(feature=steps) for name, steps in lists.items()}),
  ).SerializeToString()


def test_bare_serialized_tensors_are_exported_and_a_bad_one_dead_lettered(unrecord,
                                                                           tmp_path):
  photos = [fixtures.photo(i, 30, 24) for i in range(4)]
  payloads = [fixtures.serialized_tensor(p) for p in photos]
  garbage = b'\x08\x04\x12\x00not a tensor at all'
  frames = [tfrecord.encode_record(p) for p in payloads[:2] + [garbage] + payloads[2:]]
  path = str(tmp_path / 'dump.tfrecord')
  fixtures.write_tfrecord(path, payloads[:2] + [garbage] + payloads[2:])
  assert open(path, 'rb').read() == b''.join(frames)
  assert _inspect(unrecord, path)['record'] == 'tensor'

  out = str(tmp_path / 'out')
  result = _export(unrecord, '--input', path, '--output', out, expect=1)
  assert 'failed 1' in result.stderr
  assert _files(out) - METADATA == {f'dump-{i:06d}.png' for i in (0, 1, 3, 4)}
  for index, photo in zip((0, 1, 3, 4), photos):
    assert np.array_equal(_read_rgb(os.path.join(out, f'dump-{index:06d}.png')), photo)
  dead, = [json.loads(line) for line in open(os.path.join(out, '_dead_letter.jsonl'))]
  assert (dead['source'], dead['index'], dead['offset']) == (
      path, 2, sum(len(f) for f in frames[:2]))
  assert 'serialized tensor' in dead['message']
  assert not os.path.exists(os.path.join(out, '_SUCCESS'))


def test_bare_float_chw_batches_follow_the_rounding_rule(unrecord, tmp_path):
  batches = [np.stack([fixtures.photo(2 * b + i, 20, 28) for i in range(2)])
             for b in range(2)]
  floats = [(batch / 255.0).astype(np.float32).transpose(0, 3, 1, 2) for batch in batches]
  path = fixtures.write_tfrecord(str(tmp_path / 'batches.tfrecord'),
                                 [fixtures.serialized_tensor(f) for f in floats])
  out = str(tmp_path / 'out')
  _export(unrecord, '--input', path, '--output', out)
  assert _files(out) - METADATA == {f'batches-{b:06d}-{n:03d}.png'
                                    for b in range(2) for n in range(2)}
  for b, batch in enumerate(floats):
    for n in range(2):
      expected = np.rint(batch[n].transpose(1, 2, 0).astype(np.float64) * 255)
      got = _read_rgb(os.path.join(out, f'batches-{b:06d}-{n:03d}.png'))
      assert np.array_equal(got, expected.astype(np.uint8))
  rows = sorted(_manifest(out), key=lambda r: (r['index'], r['n']))
  assert [(r['index'], r['n'], r['shape_in']) for r in rows] == [
      (b, n, [3, 20, 28]) for b in range(2) for n in range(2)]


def test_bare_encoded_images_pass_through_or_decode_exactly(unrecord, tmp_path):
  photos = [fixtures.photo(i, 36, 28) for i in range(3)]
  pngs = [fixtures.encode_png(p) for p in photos]
  jpegs = [fixtures.encode_jpeg(p) for p in photos]
  webps = [cv2.imencode('.webp', cv2.cvtColor(p, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes() for p in photos]
  folder = tmp_path / 'in'
  for name, payloads in (('png', pngs), ('jpeg', jpegs), ('webp', webps)):
    fixtures.write_tfrecord(str(folder / f'{name}.tfrecord'), payloads)
  # Records of other kinds in the same run are each read as what they are.
  fixtures.write_tfrecord(str(folder / 'tensor.tfrecord'),
                          [fixtures.serialized_tensor(p) for p in photos])
  fixtures.write_tfrecord(str(folder / 'zexample.tfrecord'), [fixtures.example(
      {'image': fixtures.bytes_feature(fixtures.encode_png(p))}) for p in photos])
  found = _inspect(unrecord, str(folder / 'jpeg.tfrecord'))
  assert found['record'] == 'image'
  assert found['image']['format'] == 'jpeg'

  out = str(tmp_path / 'out')
  _export(unrecord, '--input', str(folder), '--output', out)
  assert _files(out) - METADATA == {
      f'{name}-{i:06d}.png' for name in ('png', 'jpeg', 'webp', 'tensor', 'zexample')
      for i in range(3)}
  rows = {r['path']: r for r in _manifest(out)}
  for i in range(3):
    assert open(os.path.join(out, f'png-{i:06d}.png'), 'rb').read() == pngs[i]
    assert rows[f'png-{i:06d}.png']['passthrough'] is True
    jpeg_pixels = tf.io.decode_jpeg(jpegs[i], dct_method='INTEGER_ACCURATE').numpy()
    assert np.array_equal(_read_rgb(os.path.join(out, f'jpeg-{i:06d}.png')), jpeg_pixels)
    assert np.array_equal(_read_rgb(os.path.join(out, f'webp-{i:06d}.png')), photos[i])
    assert np.array_equal(_read_rgb(os.path.join(out, f'tensor-{i:06d}.png')), photos[i])
    assert open(os.path.join(out, f'zexample-{i:06d}.png'), 'rb').read() == pngs[i]
  assert os.path.exists(os.path.join(out, '_SUCCESS'))

  # The JPEG records pass through untouched into JPEG output.
  out_jpeg = str(tmp_path / 'out_jpeg')
  _export(unrecord, '--input', str(folder / 'jpeg.tfrecord'), '--output', out_jpeg,
          '--format', 'jpeg')
  for i in range(3):
    assert open(os.path.join(out_jpeg, f'jpeg-{i:06d}.jpg'), 'rb').read() == jpegs[i]


def test_sequence_example_clips_give_one_image_per_step_named_by_context(unrecord,
                                                                          tmp_path):
  clips = {b'clip-a': [fixtures.photo(i, 24, 32) for i in range(3)],
           b'clip-b': [fixtures.photo(i + 3, 24, 32) for i in range(2)]}
  payloads = [_sequence(
      {'video_id': fixtures.bytes_feature(video), 'label': fixtures.int64_feature(label)},
      {'frames': [fixtures.bytes_feature(fixtures.encode_png(f)) for f in frames],
       'timestamp': [fixtures.int64_feature(100 * t) for t in range(len(frames))]})
      for label, (video, frames) in enumerate(clips.items())]
  path = fixtures.write_tfrecord(str(tmp_path / 'clips.tfrecord'), payloads)

  found = _inspect(unrecord, path)
  assert found['record'] == 'sequence_example'
  assert set(found['features']) == {'video_id', 'label'}
  assert set(found['feature_lists']) == {'frames', 'timestamp'}
  assert found['feature_lists']['frames']['max_length'] == 3
  assert (found['image']['key'], found['label_key'], found['id_key']) == (
      'frames', 'label', 'video_id')

  out = str(tmp_path / 'out')
  _export(unrecord, '--input', path, '--output', out, '--format', 'bmp',
          '--name_template', '{video_id}/{label}-{n}-t{timestamp}.{ext}')
  expected = {f'{video.decode()}/{label}-{n}-t{100 * n}.bmp': frame
              for label, (video, frames) in enumerate(clips.items())
              for n, frame in enumerate(frames)}
  assert _files(out) - METADATA == set(expected)
  for name, frame in expected.items():
    assert np.array_equal(_read_rgb(os.path.join(out, name)), frame)
  rows = sorted(_manifest(out), key=lambda r: (r['index'], r['n']))
  assert [(r['index'], r['n'], r['id'], r['label']) for r in rows] == [
      (0, 0, 'clip-a', 0), (0, 1, 'clip-a', 0), (0, 2, 'clip-a', 0),
      (1, 0, 'clip-b', 1), (1, 1, 'clip-b', 1)]
  assert os.path.exists(os.path.join(out, '_SUCCESS'))


def test_sequence_example_raw_and_tensor_lists_chosen_by_image_key(unrecord, tmp_path):
  views = [[fixtures.photo(i + v, 16, 20) for v in range(2)] for i in range(2)]
  depth = [[fixtures.photo_16bit(16, 20) >> v for v in range(2)] for _ in range(2)]
  payloads = [_sequence(
      {'height': fixtures.int64_feature(16), 'width': fixtures.int64_feature(20),
       'channels': fixtures.int64_feature(3), 'rig': fixtures.bytes_feature(b'r%d' % i)},
      {'camera/raw': [fixtures.bytes_feature(v.tobytes()) for v in views[i]],
       'depth': [fixtures.bytes_feature(fixtures.serialized_tensor(d))
                 for d in depth[i]]})
      for i in range(2)]
  path = fixtures.write_tfrecord(str(tmp_path / 'rigs.tfrecord'), payloads)

  out = str(tmp_path / 'raw')
  _export(unrecord, '--input', path, '--output', out, '--image_key', 'camera/raw',
          '--name_template', '{rig}-{n}.{ext}')
  for i in range(2):
    for v in range(2):
      assert np.array_equal(_read_rgb(os.path.join(out, f'r{i}-{v}.png')), views[i][v])

  out16 = str(tmp_path / 'depth')
  _export(unrecord, '--input', path, '--output', out16, '--image_key', 'depth',
          '--name_template', '{rig}-{n}.{ext}')
  for i in range(2):
    for v in range(2):
      got = cv2.imread(os.path.join(out16, f'r{i}-{v}.png'), cv2.IMREAD_UNCHANGED)
      assert got.dtype == np.uint16 and np.array_equal(got, depth[i][v])


def test_image_key_on_bare_records_says_it_does_not_apply(unrecord, tmp_path):
  path = fixtures.write_tfrecord(str(tmp_path / 'dump.tfrecord'),
                                 [fixtures.serialized_tensor(fixtures.photo(0, 20, 20))])
  result = _export(unrecord, '--input', path, '--output', str(tmp_path / 'out'),
                   '--image_key', 'image', expect=2)
  assert 'serialized tensor' in result.stderr and 'leave out --image_key' in result.stderr


def test_several_image_keys_write_each_named_apart_by_key(unrecord, tmp_path):
  photos = [fixtures.photo(i, 32, 24) for i in range(3)]
  masks = [(p[:, :, 0] > 120).astype(np.uint8) for p in photos]
  right = [(fixtures.photo(i + 1, 32, 24) / 255.0).astype(np.float32) for i in range(3)]
  payloads = [fixtures.example({
      'image/encoded': fixtures.bytes_feature(fixtures.encode_jpeg(p)),
      'image/segmentation/class/encoded': fixtures.bytes_feature(fixtures.encode_png(m)),
      'right': fixtures.bytes_feature(fixtures.serialized_tensor(r)),
      'image/filename': fixtures.bytes_feature(b'im%d' % i)})
      for i, (p, m, r) in enumerate(zip(photos, masks, right))]
  path = fixtures.write_tfrecord(str(tmp_path / 'seg.tfrecord'), payloads)
  keys = ['image/encoded', 'image/segmentation/class/encoded', 'right']

  out = str(tmp_path / 'out')
  _export(unrecord, '--input', path, '--output', out, '--image_key', ','.join(keys[:2]),
          '--image_key', 'right', '--format', 'jpeg')
  assert _files(out) - METADATA == {f'{folder}/seg-{i:06d}.jpg' for i in range(3) for folder
                                    in ('image_encoded', 'image_segmentation_class_encoded',
                                        'right')}
  rows = {(r['key'], r['index']): r for r in _manifest(out)}
  assert set(rows) == {(k, i) for k in keys for i in range(3)}
  for i in range(3):
    # The photo passes through; the float view is mapped from [0,1], the mask keeps 0/1.
    assert open(os.path.join(out, f'image_encoded/seg-{i:06d}.jpg'), 'rb').read() == \
        fixtures.encode_jpeg(photos[i])
    assert rows[('right', i)]['value_range'] == [0, 1]
    assert rows[('image/segmentation/class/encoded', i)]['value_range'] == [0, 255]
    assert rows[('image/encoded', i)]['id'] == f'im{i}'

  png = str(tmp_path / 'png')
  _export(unrecord, '--input', path, '--output', png, '--image_key', ','.join(keys),
          '--name_template', '{id}_{key}.{ext}')
  for i in range(3):
    mask = cv2.imread(os.path.join(png, f'im{i}_image_segmentation_class_encoded.png'),
                      cv2.IMREAD_UNCHANGED)
    assert np.array_equal(mask, masks[i])
    expected = np.rint(right[i].astype(np.float64) * 255).astype(np.uint8)
    assert np.array_equal(_read_rgb(os.path.join(png, f'im{i}_right.png')), expected)

  refused = _export(unrecord, '--input', path, '--output', str(tmp_path / 'clash'),
                    '--image_key', ','.join(keys), '--name_template', '{id}.{ext}',
                    expect=2)
  assert 'add {key} to --name_template' in refused.stderr


def _npy(array):
  import io  # pylint: disable=import-outside-toplevel
  out = io.BytesIO()
  np.save(out, array, allow_pickle=False)
  return out.getvalue()


def test_numpy_saved_arrays_as_records_and_as_features(unrecord, tmp_path):
  # Projects that dump with NumPy: np.save bytes written as the record, or in a feature.
  floats = [np.asfortranarray((fixtures.photo(i, 20, 24) / 255.0).astype('>f4'))
            for i in range(3)]  # big-endian, Fortran order
  depths = [fixtures.photo_16bit(20, 24), np.ascontiguousarray(fixtures.photo_16bit(20, 24).T)]
  folder = tmp_path / 'in'
  fixtures.write_tfrecord(str(folder / 'bare.tfrecord'), [_npy(a) for a in floats])
  fixtures.write_tfrecord(str(folder / 'feature.tfrecord'), [fixtures.example(
      {'pixels': fixtures.bytes_feature(_npy(d)), 'id': fixtures.bytes_feature(b'd%d' % i)})
      for i, d in enumerate(depths)])
  found = _inspect(unrecord, str(folder / 'bare.tfrecord'))
  assert (found['record'], found['image']['dtype'], found['image']['shape']) == (
      'tensor', 'float32', [20, 24, 3])

  out = str(tmp_path / 'out')
  _export(unrecord, '--input', str(folder / 'bare.tfrecord'), '--output', out)
  for i, x in enumerate(floats):
    expected = np.rint(np.asarray(x, np.float64) * 255).astype(np.uint8)
    assert np.array_equal(_read_rgb(os.path.join(out, f'bare-{i:06d}.png')), expected)

  out_feature = str(tmp_path / 'out_feature')
  _export(unrecord, '--input', str(folder / 'feature.tfrecord'), '--output', out_feature,
          '--name_template', '{id}.{ext}')
  for i, depth in enumerate(depths):
    got = cv2.imread(os.path.join(out_feature, f'd{i}.png'), cv2.IMREAD_UNCHANGED)
    assert got.dtype == np.uint16 and np.array_equal(got, depth)
