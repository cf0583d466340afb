"""What a run prints, and where Beam's and the libraries' log lines go (beam_jobs/logs.py).

A run prints its settled-choices line, the progress display and its closing line; every
other line goes to its log, `_logs/unrecord-*.log` under the output, which the closing line
names. Checked in the lean install too (`make lean-venv`: what `make demo` installs, no
TensorFlow, no Beam [gcp] extra), where Beam's import warnings and its own workers' INFO
lines reached the terminal and the full test venv hid them.
"""

import os
import re
import subprocess

import cv2
import numpy as np
import pytest

from tests import fixtures
from tests import outputs
from tests.conftest import REPO, run_unrecord
from tests.test_export_job import OFFLINE

LEAN_PYTHON = os.path.join(REPO, 'build', 'lean-venv', 'bin', 'python')
NOISE = ('WARNING', 'INFO', 'Traceback', 'apitools')


@pytest.fixture(scope='session')
def lean_python():
  """The lean venv's python, built by `make lean-venv` when missing (cached after)."""
  done = subprocess.run(['make', '-s', 'lean-venv'], cwd=REPO, capture_output=True,
                        text=True, timeout=900)
  assert done.returncode == 0, done.stdout + done.stderr
  return LEAN_PYTHON


def _lean(python, *args, timeout=300):
  """`python args...` in the lean venv on this checkout's code; stdout and stderr as one."""
  env = dict(os.environ, PYTHONPATH=REPO, **OFFLINE)
  env.pop('PYTHONHOME', None)
  result = subprocess.run([python, *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=timeout)
  return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope='module')
def eight_photos(tmp_path_factory):
  folder = tmp_path_factory.mktemp('eight')
  photos = {f'p{i}': fixtures.photo(i, 32, 28) for i in range(8)}
  fixtures.write_tfrecord(str(folder / 'photos.tfrecord'), [fixtures.example({
      'image': fixtures.bytes_feature(fixtures.serialized_tensor(photo)),
      'id': fixtures.bytes_feature(key.encode())}) for key, photo in photos.items()])
  return str(folder / 'photos.tfrecord'), photos


def _check_images(out, photos):
  rows = outputs.manifest_rows(out)
  assert sorted(r['id'] for r in rows) == sorted(photos)
  for row in rows:
    data = open(os.path.join(out, row['path']), 'rb').read()
    pixels = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                          cv2.COLOR_BGR2RGB)
    assert np.array_equal(pixels, photos[row['id']]), row['path']
  assert os.path.exists(os.path.join(out, '_SUCCESS'))


def _named_log(line, out):
  """The log the closing line names: one file under `out`/_logs/."""
  found = re.search(r'; log: (\S+)$', line)
  assert found, line
  path = found.group(1)
  assert os.path.dirname(path) == os.path.join(str(out), '_logs'), path
  assert os.listdir(os.path.join(str(out), '_logs')) == [os.path.basename(path)]
  return open(path, encoding='utf-8').read()


def test_help_prints_no_warning_in_the_lean_install(lean_python):
  for args in (('beam_jobs.cli', '--help'), ('beam_jobs.cli', 'export', '--help'),
               ('beam_jobs.export_images', '--help'), ('beam_jobs.cli', 'inspect', '--help')):
    code, text = _lean(lean_python, '-m', *args)
    assert code == 0, text[-3000:]
    assert text.startswith('usage: '), text[:500]
    assert not [word for word in NOISE if word in text], text[:2000]


@pytest.mark.parametrize('command', [('-m', 'beam_jobs.cli', 'export'),
                                     ('-m', 'beam_jobs.export_images')],
                         ids=['unrecord export', 'python -m beam_jobs.export_images'])
def test_a_lean_install_run_prints_only_its_own_lines(lean_python, eight_photos, tmp_path,
                                                      command):
  source, photos = eight_photos
  quiet = tmp_path / 'quiet'
  code, text = _lean(lean_python, *command, '--input', source, '--output', str(quiet),
                     '--quiet')
  assert code == 0, text[-3000:]
  assert text == '', text[:3000]  # --quiet: nothing at all on success
  _check_images(quiet, photos)

  out = tmp_path / 'out'
  # Two worker processes (a small input alone runs in the launcher): their lines too.
  code, text = _lean(lean_python, *command, '--input', source, '--output', str(out),
                     '--direct_num_workers', '2')
  assert code == 0, text[-3000:]
  lines = text.splitlines()
  assert not [word for word in NOISE if word in text], text[:3000]
  assert lines[0].startswith('unrecord export: ') and 'runner DirectRunner' in lines[0]
  # Between the settled choices and the closing line: only the progress display (a line
  # every --progress_interval seconds, stderr not being a terminal).
  assert all(line.startswith('unrecord: [') for line in lines[1:-1]), text[:3000]
  assert lines[-1].startswith('unrecord export: written 8 '), text[:3000]
  log = _named_log(lines[-1], out)
  # The workers' own lines are there, not on the terminal.
  assert 'sdk harness starting' in log.lower()
  # Beam's BigQuery IO warns at import that apitools is missing: in the log when the
  # module imported Beam whole; `unrecord export` imports it without Google Cloud's IOs.
  assert ('apitools not found' in log) == (command[1] == 'beam_jobs.export_images')
  _check_images(out, photos)


def test_the_demo_prints_at_most_30_lines_in_the_lean_install(lean_python, tmp_path):
  folder = tmp_path / 'demo_out'
  code, text = _lean(lean_python, '-m', 'beam_jobs.demo', '--folder', str(folder),
                     timeout=600)
  assert code == 0, text[-3000:]
  lines = [line for line in text.splitlines() if line.strip()]
  assert len(lines) <= 30, text[:4000]
  assert not [word for word in NOISE if word in text], text[:3000]
  assert f'Look at: {folder / "contact_sheet.png"}' in text
  for name in ('tensors', 'raw', 'encoded', 'batched'):
    root = folder / 'images' / name
    assert (root / '_SUCCESS').exists()
    assert len(outputs.manifest_rows(root)) >= 20
    assert len(os.listdir(root / '_logs')) == 1
  print(f'make demo (lean install): {len(lines)} lines')


def test_log_level_puts_the_log_lines_on_the_terminal_too(eight_photos, tmp_path):
  source, photos = eight_photos
  out = tmp_path / 'out'
  result = run_unrecord('export', '--input', source, '--output', str(out), '--quiet',
                        '--log_level', 'INFO', '--direct_num_workers', '2', env=OFFLINE)
  assert result.returncode == 0, result.stderr[-3000:]
  shown = [line for line in result.stderr.splitlines() if ' INFO apache_beam' in line]
  assert len(shown) >= 5, result.stderr[:3000]
  assert 'Traceback' not in result.stderr
  _check_images(out, photos)
  (log,) = os.listdir(out / '_logs')
  written = open(out / '_logs' / log, encoding='utf-8').read()
  assert all(line in written for line in shown[:5])  # the same lines, in the log too
  assert 'sdk harness starting' in written.lower()

  quiet = run_unrecord('export', '--input', source, '--output', str(tmp_path / 'q'),
                       '--quiet', '--log_level', 'error', env=OFFLINE)
  assert quiet.returncode == 0 and quiet.stderr == '', quiet.stderr[:3000]


def test_the_root_keeps_the_newest_logs_and_every_listing_ignores_them(eight_photos,
                                                                       tmp_path):
  source, photos = eight_photos
  out = tmp_path / 'out'
  logs = out / '_logs'
  logs.mkdir(parents=True)
  old = [f'unrecord-2020010{i}T000000Z-0000000{i}.log' for i in range(1, 10)] + [
      'unrecord-20200110T000000Z-00000010.log']
  for name in old:
    (logs / name).write_text('an earlier run\n')
  (logs / 'notes.txt').write_text('a user file')  # not a run log: kept
  first = run_unrecord('export', '--input', source, '--output', str(out), env=OFFLINE)
  assert first.returncode == 0, first.stderr[-3000:]
  kept = sorted(os.listdir(logs))
  new = os.path.basename(re.search(r'; log: (\S+)$', first.stderr.strip()).group(1))
  assert kept == sorted(old[1:] + [new, 'notes.txt'])  # the oldest run log went
  # --overwrite keeps the logs; the manifest still lists exactly the images.
  again = run_unrecord('export', '--input', source, '--output', str(out), '--overwrite',
                       env=OFFLINE)
  assert again.returncode == 0, again.stderr[-3000:]
  assert len([n for n in os.listdir(logs) if n.endswith('.log')]) == 10
  assert (logs / 'notes.txt').exists()
  rows = outputs.manifest_rows(out)
  images = {os.path.relpath(os.path.join(d, n), out) for d, _, names in os.walk(out)
            for n in names if not n.startswith('_') and '/_' not in d[len(str(out)):]}
  assert {r['path'] for r in rows} == images
  _check_images(out, photos)
