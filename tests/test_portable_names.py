"""Names that Windows refuses or a case-insensitive disk merges (docs/export.md, "Output names"):
counted in the closing line and the report as they are written, and made safe by
--portable_names. Whole jobs on TensorFlow-written records of real photographs."""

import hashlib
import json
import os

import cv2
import numpy as np
import pytest

from tests import fixtures
from tests import outputs
from tests.test_export_job import _export, _files

IDS = ['CON', 'nul', 'aux.png', 'Cat', 'cat', 'a.', 'b ', 'ok']
TEMPLATE = '{id}/img.{ext}'
AS_IS = ['CON/img.png', 'nul/img.png', 'aux.png/img.png', 'Cat/img.png', 'cat/img.png',
         'a./img.png', 'b/img.png', 'ok/img.png']


def _suffix(text):
  return '~' + hashlib.sha1(text.encode()).hexdigest()[:8]


# docs/export.md's rule, spelled out: a folder that is reserved on Windows, ends in a dot
# or holds a capital letter gets ~ and 8 hex digits of its SHA-1 before its first dot.
PORTABLE = ['CON' + _suffix('CON') + '/img.png', 'nul' + _suffix('nul') + '/img.png',
            'aux' + _suffix('aux.png') + '.png/img.png', 'Cat' + _suffix('Cat') + '/img.png',
            'cat/img.png', 'a' + _suffix('a.') + '/img.png', 'b/img.png', 'ok/img.png']


@pytest.fixture(scope='module')
def records(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('names') / 'photos.tfrecord')
  photos = [fixtures.photo(i, 24, 20) for i in range(len(IDS))]
  fixtures.write_tfrecord(path, [fixtures.example({
      'image': fixtures.bytes_feature(fixtures.encode_png(p)),
      'id': fixtures.bytes_feature(i.encode())}) for i, p in zip(IDS, photos)])
  return path, photos


def _images(out):
  return {f for f in _files(out) if not f.startswith('_')}


def _check_written(out, names, photos):
  assert _images(out) == set(names)
  rows = outputs.manifest_rows(out)
  assert sorted(r['path'] for r in rows) == sorted(names)
  for row in rows:
    pixels = cv2.cvtColor(cv2.imread(os.path.join(out, row['path'])), cv2.COLOR_BGR2RGB)
    assert np.array_equal(pixels, photos[row['index']]), row['path']
    assert row['path'] == names[row['index']]


def test_names_are_written_as_is_and_the_unportable_ones_counted(unrecord, tmp_path,
                                                                   records):
  path, photos = records
  out = str(tmp_path / 'out')
  result = _export(unrecord, '--input', path, '--output', out, '--name_template', TEMPLATE)
  _check_written(out, AS_IS, photos)
  closing = result.stderr.strip().splitlines()[-1]
  assert ('; warning: 6 names are not portable: 3 reserved on Windows (aux.png/img.png, '
          'CON/img.png, nul/img.png), 1 end in a dot or space (a./img.png), 1 pair '
          'differs only by case or Unicode form, so a case-insensitive disk (macOS, '
          'Windows) keeps one of each (Cat/img.png, cat/img.png); --portable_names makes '
          'them safe') in closing, closing
  with open(os.path.join(out, '_report.json'), encoding='utf-8') as f:
    report = json.load(f)
  counts = report['portability']
  assert (counts['names'], counts['not_portable'], counts['reserved'], counts['trailing'],
          counts['case_groups'], counts['case_names']) == (8, 6, 3, 1, 1, 2)
  assert counts['examples']['case'] == [['Cat/img.png', 'cat/img.png']]
  assert any('6 names are not portable' in w for w in report['warnings'])
  with open(os.path.join(out, '_report.html'), encoding='utf-8') as f:
    assert '6 names are not portable' in f.read()


def test_portable_names_makes_every_name_safe_and_stable(unrecord, tmp_path, records):
  path, photos = records
  out = str(tmp_path / 'out')
  args = ('--input', path, '--output', out, '--name_template', TEMPLATE,
          '--portable_names')
  result = _export(unrecord, *args)
  _check_written(out, PORTABLE, photos)
  assert 'not portable' not in result.stderr, result.stderr[-2000:]
  with open(os.path.join(out, '_report.json'), encoding='utf-8') as f:
    report = json.load(f)
  assert 'portability' not in report and not report['warnings']  # every name portable
  # Nothing a case-insensitive disk would merge: the folded names are all different.
  assert len({n.casefold() for n in _images(out)}) == len(PORTABLE)
  stamps = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in PORTABLE}
  again = _export(unrecord, *args, '--skip_existing')
  assert 'written 0 (passthrough 0), skipped 8, failed 0' in again.stderr, again.stderr
  assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in PORTABLE} == stamps
  _check_written(out, PORTABLE, photos)
