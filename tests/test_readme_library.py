"""docs/library.md, "Using the transforms in your own pipeline", run as written: each
python block is taken from the page and run in a fresh process, in a folder that holds
TensorFlow-written records of photos at records/, the paths the blocks name."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests import fixtures
from tests import outputs
from tests.conftest import REPO
from tests.test_export_job import OFFLINE


def _blocks():
  with open(os.path.join(REPO, 'docs', 'library.md'), encoding='utf-8') as f:
    text = f.read()
  return re.findall(r'```python\n(.*?)```', text, re.S)


@pytest.fixture
def folder(tmp_path):
  photos = [fixtures.photo(i, 32, 24) for i in range(6)]
  fixtures.write_tfrecord(str(tmp_path / 'records' / 'photos.tfrecord'), [fixtures.example({
      'image': fixtures.bytes_feature(fixtures.serialized_tensor(photo)),
      'id': fixtures.bytes_feature(f'photo-{i}'.encode()),
      'label': fixtures.int64_feature(i % 2)}) for i, photo in enumerate(photos)])
  return tmp_path, photos


def _run(code, cwd):
  return subprocess.run([sys.executable, '-c', code], cwd=cwd, capture_output=True,
                        text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH=REPO, **OFFLINE))


def test_the_page_has_the_two_blocks():
  blocks = _blocks()
  assert len(blocks) == 2
  assert 'ExportImages' in blocks[0] and 'DecodeImages' in blocks[1]


def test_the_export_block_writes_the_images_as_the_command_does(folder):
  cwd, photos = folder
  result = _run(_blocks()[0], cwd)
  assert result.returncode == 0, result.stderr[-3000:]
  out = cwd / 'images'
  assert (out / '_SUCCESS').exists()
  rows = outputs.manifest_rows(out)
  assert [row['path'] for row in rows] == [f'photo-{i}.png' for i in range(6)]
  for i, photo in enumerate(photos):
    assert np.array_equal(np.asarray(Image.open(out / f'photo-{i}.png')), photo)
  report = json.load(open(out / '_report.json'))
  assert (report['written'], report['failed'], report['success']) == (6, 0, True)


def test_the_read_and_decode_block_sees_every_image(folder):
  cwd, photos = folder
  result = _run(_blocks()[1], cwd)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = []
  for name in sorted(os.listdir(cwd)):
    if name.startswith('brightness'):
      lines += (cwd / name).read_text().splitlines()
  expected = sorted(str((i % 2, photo.mean())) for i, photo in enumerate(photos))
  assert sorted(lines) == expected


def test_import_transforms_does_not_import_beam_until_a_transform_is_used():
  code = ('import sys, transforms as unrecord\n'
          'unrecord.Request; unrecord.read_all; unrecord.decode_record\n'
          'assert "apache_beam" not in sys.modules, "Beam was imported"\n'
          'unrecord.ExportImages\n'
          'assert "apache_beam" in sys.modules\n'
          'try:\n'
          '  unrecord.NoSuchThing\n'
          'except AttributeError as e:\n'
          '  assert "NoSuchThing" in str(e)\n'
          'else:\n'
          '  raise SystemExit("an unknown name did not fail")\n')
  result = _run(code, REPO)
  assert result.returncode == 0, result.stderr[-3000:]
