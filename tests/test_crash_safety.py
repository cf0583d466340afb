"""Hostile names, replayed bundles, a failed write, and a job killed mid-run then run again."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np

from tests import fixtures
from tests import outputs
from tests.conftest import REPO
from transforms import errors
from transforms.output import root_files

MARKER = 'unrecord-escape-7f3a'
HOSTILE = ['../../x', '/etc/x', 'a/../../b', 'C:\\x', '\\\\srv\\x', '..', '.', 'a\x00b',
           'a\r\nb', 'x' * 2000, '\uff0e\uff0e\uff0f\uff0e\uff0e\uff0fx', 'a\u2215b',
           '\u2025/x', f'../../{MARKER}', f'/tmp/{MARKER}', f'..\\..\\{MARKER}',
           f'\uff0e\uff0e\uff0f{MARKER}', f'{MARKER}\x00/../../etc']


def _listing(folder):
  found = set()
  for root, dirs, files in os.walk(folder):
    for name in dirs + files:
      found.add(os.path.relpath(os.path.join(root, name), folder))
  return found


def test_hostile_ids_and_label_names_write_nothing_outside_the_root(unrecord, tmp_path):
  records = [fixtures.example({
      'image': fixtures.bytes_feature(fixtures.serialized_tensor(fixtures.photo(i, 8, 8))),
      'id': fixtures.bytes_feature(value.encode('utf-8')),
      'label': fixtures.int64_feature(i % len(HOSTILE))}) for i, value in enumerate(HOSTILE)]
  source = fixtures.write_tfrecord(str(tmp_path / 'in' / 'names.tfrecord'), records)
  labels = tmp_path / 'labels.txt'
  labels.write_text('\n'.join(v.replace('\n', ' ').replace('\r', ' ').replace('\x00', '')
                              for v in reversed(HOSTILE)) + '\n', encoding='utf-8')
  parent = tmp_path / 'parent'
  out = parent / 'root'
  parent.mkdir()
  (parent / 'sibling.txt').write_text('untouched')
  before_parent, before_tmp = _listing(parent), set(os.listdir('/tmp'))
  etc_x = os.path.exists('/etc/x')

  result = unrecord('export', '--input', source, '--output', str(out), '--label_names',
                    str(labels), '--name_template', '{label_name}/{id}-{index}.{ext}',
                    '--max_failures', str(len(HOSTILE)))
  assert result.returncode == 0, result.stderr[-3000:]

  outside_root = {p for p in _listing(parent)
                  if p != 'root' and not p.startswith('root' + os.sep)}
  assert outside_root == before_parent
  assert (parent / 'sibling.txt').read_text() == 'untouched'
  new_in_tmp = set(os.listdir('/tmp')) - before_tmp
  assert not [n for n in new_in_tmp if MARKER in n or n == 'x']
  assert os.path.exists('/etc/x') == etc_x
  real_root = os.path.realpath(out)
  images = [p for p in _listing(out) if p.endswith('.png')]
  for path in images:
    full = os.path.realpath(os.path.join(out, path))
    assert full.startswith(real_root + os.sep)
    assert all(len(part.encode()) <= 255 for part in path.split(os.sep))
    assert not any(part.startswith('.') for part in path.split(os.sep))
  report = json.load(open(out / '_report.json'))
  assert report['written'] + report['failed'] == len(HOSTILE)  # nothing lost silently
  assert report['written'] == len(images) == len(HOSTILE)
  print(f'hostile names: {len(HOSTILE)} ids and {len(HOSTILE)} label names tried, '
        f'{len(images)} images written inside the root, {report["failed"]} dead-lettered')


def _dataset(folder, count, size=32):
  photos = [fixtures.photo(i, size, size) for i in range(count)]
  fixtures.write_tfrecord(str(folder / 'a.tfrecord'), [
      fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(p))})
      for p in photos[:count // 2]])
  fixtures.write_tfrecord(str(folder / 'b.tfrecord'), [
      fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(p))})
      for p in photos[count // 2:]])
  expected = {}
  for i, photo in enumerate(photos):
    stem, index = ('a', i) if i < count // 2 else ('b', i - count // 2)
    expected[f'{stem}-{index:06d}.png'] = photo
  return expected


def _check_complete(out, expected):
  """Every image present and right, the manifest equal to the files, no temp debris."""
  names = set(os.listdir(out))
  assert {n for n in names if n.endswith('.png')} == set(expected)
  assert not [n for n in _listing(out) if n.endswith(root_files.TEMP_SUFFIX)]
  for name, photo in expected.items():
    pixels = cv2.cvtColor(cv2.imread(os.path.join(out, name)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(pixels, photo), name
  rows = {row['path']: row for row in outputs.manifest_rows(out)}
  assert set(rows) == set(expected)
  for name, row in rows.items():
    data = open(os.path.join(out, name), 'rb').read()
    assert (row['bytes'], row['sha256']) == (len(data), hashlib.sha256(data).hexdigest())
  assert os.path.exists(os.path.join(out, '_SUCCESS'))


def test_replayed_bundles_leave_exactly_the_expected_files(unrecord, tmp_path):
  expected = _dataset(tmp_path, 40)
  out = tmp_path / 'out'
  result = unrecord('export', '--input', str(tmp_path / '*.tfrecord'), '--output',
                    str(out), '--direct_runner_bundle_repeat', '2')
  assert result.returncode == 0, result.stderr[-3000:]
  _check_complete(str(out), expected)
  assert set(os.listdir(out)) == set(expected) | {
      '_manifest', '_dead_letter.jsonl', '_dead_letter.tfrecord', '_report.json',
      '_report.html', '_SUCCESS', '_unrecord_run.json', '_logs'}
  assert os.listdir(out / '_manifest') and outputs.manifest_parts(out)
  assert json.load(open(out / '_report.json'))['written'] == 40
  print(f'bundle repeat: {len(expected)} images, listing exact, no temp debris')


def test_killed_mid_run_then_rerun_is_complete_and_idempotent(unrecord, tmp_path):
  expected = _dataset(tmp_path, 1500)
  out = tmp_path / 'out'
  args = [sys.executable, '-m', 'beam_jobs.cli', 'export', '--input',
          str(tmp_path / '*.tfrecord'), '--output', str(out), '--skip_existing',
          '--png_encoder', 'opencv']
  job = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
  deadline = time.time() + 120
  while time.time() < deadline and not (
      out.exists() and any(n.endswith('.png') for n in os.listdir(out))):
    time.sleep(0.02)
  os.killpg(job.pid, signal.SIGKILL)  # the launcher and every worker process
  job.wait()
  partial = [n for n in os.listdir(out) if n.endswith('.png')]
  debris = [n for n in _listing(out) if n.endswith(root_files.TEMP_SUFFIX)]
  print(f'kill: {len(partial)} of {len(expected)} images and {len(debris)} temp files '
        'on disk when killed')
  assert 0 < len(partial) < len(expected), 'the kill must land mid-run'
  assert not os.path.exists(out / '_SUCCESS')

  result = unrecord('export', '--input', str(tmp_path / '*.tfrecord'), '--output',
                    str(out), '--skip_existing', '--png_encoder', 'opencv')
  assert result.returncode == 0, result.stderr[-3000:]
  _check_complete(str(out), expected)
  report = json.load(open(out / '_report.json'))
  assert report['skipped'] >= len(partial)
  assert report['written'] + report['skipped'] == len(expected)

  reports = ('_report.json', '_report.html')  # they describe the latest run
  def unchanged(n):  # nor the run logs: each run adds its own under _logs/
    return n not in reports and not n.startswith('_logs') and os.path.isfile(out / n)
  before = {n: open(out / n, 'rb').read() for n in _listing(out) if unchanged(n)}
  result = unrecord('export', '--input', str(tmp_path / '*.tfrecord'), '--output',
                    str(out), '--skip_existing', '--png_encoder', 'opencv')
  assert result.returncode == 0
  after = {n: open(out / n, 'rb').read() for n in _listing(out) if unchanged(n)}
  assert after == before  # images, manifest, dead letter and _SUCCESS: every byte
  assert json.load(open(out / '_report.json'))['written'] == 0


def test_a_failed_write_raises_a_write_error_and_leaves_no_temp_file(tmp_path):
  root = root_files.OutputRoot(str(tmp_path), None)
  root.write('kept.png', b'old')
  (tmp_path / 'taken').mkdir()
  (tmp_path / 'taken' / 'inside').write_bytes(b'x')  # os.replace onto a full folder fails

  try:
    root.write('taken', b'new bytes')
  except errors.WriteError as e:
    assert e.reason == errors.WRITE_ERROR
    assert 'taken' in str(e)
  else:
    raise AssertionError('writing over a folder did not fail')

  assert _listing(tmp_path) == {'kept.png', 'taken', os.path.join('taken', 'inside')}
  assert (tmp_path / 'kept.png').read_bytes() == b'old'
  root.write('kept.png', b'new')  # and a good write after it still lands whole
  assert (tmp_path / 'kept.png').read_bytes() == b'new'


def test_short_writes_are_completed_before_the_file_is_renamed_into_place(tmp_path,
                                                                          monkeypatch):
  data = fixtures.encode_png(fixtures.photo(height=32, width=32))
  real_write = os.write
  calls = []
  # what a write interrupted by a signal returns: fewer bytes than asked for
  monkeypatch.setattr(root_files.os, 'write',
                      lambda fd, chunk: calls.append(1) or real_write(fd, bytes(chunk[:100])))
  root_files.OutputRoot(str(tmp_path), None).write('a/short.png', data)
  assert (tmp_path / 'a' / 'short.png').read_bytes() == data
  assert len(calls) == -(-len(data) // 100)
  assert _listing(tmp_path) == {'a', os.path.join('a', 'short.png')}
