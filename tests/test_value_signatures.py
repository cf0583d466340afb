"""The common value signatures (docs/export.md, "Normalization"): `inspect` and the launch line
name them and the flag that reads them right, and mean/std-normalized data exported
without --mean warns with the exact flag. On TensorFlow-written float32 tensors
(`tf.io.serialize_tensor`) of real photographs."""

import json
import os

import cv2
import numpy as np
import pytest

from tests import fixtures
from tests import outputs
from tests.test_export_job import OFFLINE, _export

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
WARNING = ("'image' values -2.1179..2.1694 look like ImageNet mean/std data "
           "(-2.1179..2.64); they are stretched over the sample's min..max as they are: "
           "pass --mean imagenet (it sets --std too) to undo it")


def _photos():
  return [fixtures.photo(i, 48, 40) for i in range(4)]


def _records(tmp_path, stored):
  return fixtures.write_tfrecord(str(tmp_path / 'in.tfrecord'), [fixtures.example(
      {'image': fixtures.bytes_feature(fixtures.serialized_tensor(x))}) for x in stored])


@pytest.fixture(scope='module')
def imagenet(tmp_path_factory):
  photos = _photos()
  stored = [((p / 255.0 - MEAN) / STD).astype(np.float32) for p in photos]
  return _records(tmp_path_factory.mktemp('imagenet'), stored), photos


def _pixels(out):
  rows = sorted(outputs.manifest_rows(out), key=lambda r: r['index'])
  return [cv2.cvtColor(cv2.imread(os.path.join(out, r['path'])), cv2.COLOR_BGR2RGB)
          for r in rows]


def test_imagenet_data_without_mean_warns_with_the_flag(unrecord, tmp_path, imagenet):
  path, photos = imagenet
  out = str(tmp_path / 'out')
  result = _export(unrecord, '--input', path, '--output', out)
  launch, closing = result.stderr.strip().splitlines()[0], result.stderr.strip().splitlines()[-1]
  assert f'-> 8-bit; warning: {WARNING}; -> png' in launch, launch
  # The closing line names the run's log last (tests/test_logs.py); the warning before it.
  assert f'; warning: {WARNING}; log: ' in closing, closing
  with open(os.path.join(out, '_report.json'), encoding='utf-8') as f:
    report = json.load(f)
  assert report['warnings'] == [WARNING]
  assert report['settled']['images'][0]['suggested']['flags'] == ['--mean', 'imagenet']
  # The behaviour is kept (min-max over the sample), which is why it warns: far off.
  worst = max(int(np.abs(got.astype(int) - p).max()) for got, p in zip(_pixels(out), photos))
  assert worst > 10


def test_the_suggested_flag_gives_the_photos_back(unrecord, tmp_path, imagenet):
  path, photos = imagenet
  out = str(tmp_path / 'out')
  result = _export(unrecord, '--input', path, '--output', out, '--mean', 'imagenet')
  assert 'warning' not in result.stderr, result.stderr[-2000:]
  assert 'values 0..1 ([0,1] data, from the sample, after --mean/--std)' in result.stderr
  for got, photo in zip(_pixels(out), photos):
    assert int(np.abs(got.astype(int) - photo).max()) <= 1


def test_inspect_names_the_signature_and_the_flag(unrecord, imagenet):
  path, _ = imagenet
  text = unrecord('inspect', '--input', path, env=OFFLINE)
  assert text.returncode == 0, text.stderr
  assert 'values look like ImageNet mean/std data: export with --mean imagenet' in text.stdout
  assert WARNING in text.stdout
  listed = unrecord('inspect', '--input', path, '--json', env=OFFLINE)
  settled = json.loads(listed.stdout)['settled']['images'][0]
  assert settled['suggested']['flags'] == ['--mean', 'imagenet']


@pytest.mark.parametrize('scaled, name, flag', [
    (lambda p: p / 127.5 - 1, '[-1,1]', '--value_range=-1,1'),
    (lambda p: p / 255.0, '[0,1]', '--value_range=0,1'),
])
def test_the_launch_line_and_inspect_name_a_standard_range(unrecord, tmp_path, scaled,
                                                           name, flag):
  photos = _photos()
  path = _records(tmp_path, [scaled(p.astype(np.float64)).astype(np.float32)
                             for p in photos])
  low = name[1:-1].split(',')[0]
  result = _export(unrecord, '--input', path, '--output', str(tmp_path / 'out'))
  assert f'values {low}..1 ({name} data, from the sample) -> 8-bit; -> png' in result.stderr
  assert 'warning' not in result.stderr
  for got, photo in zip(_pixels(str(tmp_path / 'out')), photos):
    assert int(np.abs(got.astype(int) - photo).max()) <= 1
  text = unrecord('inspect', '--input', path, env=OFFLINE).stdout
  assert (f'values look like {name} data: export takes them so by itself (as {flag} '
          'would)') in text, text
