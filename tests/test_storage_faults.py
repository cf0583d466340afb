"""The output storage failing mid-run: turning read-only, filling up.

Each run ends with exit 3 and one line naming the cause and what to do (no traceback from
the launcher or its workers: theirs is in the run's log), and the next run, once the
storage is writable again, finishes exactly whatever the first left behind. The
filesystems are tmpfs mounts the test makes (the tests run as root), unmounted after.
"""

import os
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.test_scheduler_promises import _check_root, _images_in, _shards, _wait_until


def _mount(*args, busy_retry_seconds: float = 0):
  """`mount ARGS`; a mount point busy for a moment (a file the run opened for writing
  through it, between two mount calls) is tried again for up to busy_retry_seconds."""
  deadline = time.monotonic() + busy_retry_seconds
  while True:
    done = subprocess.run(['mount', *args], capture_output=True, text=True)
    if done.returncode == 0 or 'busy' not in done.stderr or time.monotonic() > deadline:
      break
    time.sleep(0.01)
  assert done.returncode == 0, f'mount {" ".join(args)}: {done.stderr}'


@pytest.fixture
def disk(tmp_path):
  """A 200 MB tmpfs for the output (a test resizes it with `mount -o remount,size=`),
  unmounted after the test with whatever the test mounted over it."""
  mount = tmp_path / 'disk'
  mount.mkdir()
  _mount('-t', 'tmpfs', '-o', 'size=200m', 'tmpfs', str(mount))
  yield mount
  for _ in range(3):  # a read-only bind over it, then the tmpfs
    subprocess.run(['umount', '-l', str(mount)], capture_output=True, check=False)


def _export(command, *args):
  return subprocess.Popen([sys.executable, *command, *args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _own_lines(job, timeout=300):
  out, err = job.communicate(timeout=timeout)
  return job.returncode, [line for line in (out + err).splitlines() if line.strip()]


def _no_debris(out):
  assert not (out / '_unrecord_lock.json').exists()
  assert not (out / '_unrecord_tmp').exists()


@pytest.fixture(scope='module')
def small_photos(tmp_path_factory):
  """2,000 photos of 32x32 in 4 shards: (folder, {id: photo})."""
  src = tmp_path_factory.mktemp('small')
  return src, _shards(src, 4, 500, size=32)


@pytest.fixture(scope='module')
def large_photos(tmp_path_factory):
  """2,000 photos of 96x96 in 8 shards, about 55 MB as PNG: (folder, {id: photo})."""
  src = tmp_path_factory.mktemp('large')
  return src, _shards(src, 8, 250, size=96)


UNRECORD = ('-m', 'beam_jobs.cli', 'export')
MODULE = ('-m', 'beam_jobs.export_images')


@pytest.mark.parametrize('rerun', ['plain', 'skip_existing'])
def test_output_turning_read_only_mid_run_ends_with_one_line_and_the_next_run_finishes(
    small_photos, disk, rerun):
  (src, photos), out = small_photos, disk / 'out'
  args = ('--input', str(src), '--output', str(out), '--png_encoder', 'opencv')
  job = _export(UNRECORD, *args, '--quiet')
  try:
    _wait_until(lambda: _images_in(out) > 0, what='the first image')
    # Read-only from now on for every new open, unlink and rename (a bind mount over the
    # tmpfs: the tmpfs itself cannot be remounted read-only while the run holds files
    # open for writing; the bind too, if the run opens one through it before it is read-
    # only: then again, a moment later).
    _mount('--bind', str(disk), str(disk))
    _mount('-o', 'remount,ro,bind', str(disk), busy_retry_seconds=10)
    code, lines = _own_lines(job)
  finally:
    if job.poll() is None:
      job.kill()
  assert code == 3, lines[-20:]
  assert len(lines) == 1, lines[:40]  # no traceback, no worker's lines
  assert 'Read-only file system (EROFS)' in lines[0], lines[0]
  assert 'make the output root writable' in lines[0] and '--skip_existing' in lines[0]
  assert not (out / '_SUCCESS').exists()
  log = re.search(r'; log: (\S+)$', lines[0]).group(1)
  assert os.path.exists(log)  # the root could not take it: the temp copy, named
  os.unlink(log)

  subprocess.run(['umount', str(disk)], check=True)  # the read-only bind: writable again
  extra = ('--skip_existing',) if rerun == 'skip_existing' else ()
  code, lines = _own_lines(_export(UNRECORD, *args, '--quiet', *extra))
  assert code == 0 and lines == [], lines[-20:]
  rows = _check_root(out, photos)
  assert len(rows) == len(photos) == 2000
  assert (out / '_SUCCESS').exists()
  _no_debris(out)
  print(f'read-only mid-run, then a {rerun} re-run: {len(rows)} images exact')


@pytest.mark.parametrize('command', [UNRECORD, MODULE],
                         ids=['unrecord export', 'python -m beam_jobs.export_images'])
def test_a_full_disk_ends_with_one_line_and_the_workers_tracebacks_only_in_the_log(
    large_photos, disk, command):
  (src, photos), out = large_photos, disk / 'out'  # 55 MB of PNG for a 40 MB disk
  _mount('-o', 'remount,size=40m', str(disk))
  args = ('--input', str(src), '--output', str(out), '--png_encoder', 'opencv',
          '--png_compression', '0')
  code, lines = _own_lines(_export(command, *args, '--quiet'))
  assert code == 3, lines[-20:]
  assert len(lines) == 1, f'{len(lines)} lines: {lines[:40]}'
  assert 'No space left on device (ENOSPC)' in lines[0], lines[0]
  assert 'free space on the output storage' in lines[0] and '--skip_existing' in lines[0]
  assert not (out / '_SUCCESS').exists()
  log = open(re.search(r'; log: (\S+)$', lines[0]).group(1), encoding='utf-8').read()
  assert 'Traceback' in log and 'No space left on device' in log  # the worker's, here

  _mount('-o', 'remount,size=200m', str(disk))
  code, lines = _own_lines(_export(command, *args, '--quiet', '--skip_existing'))
  assert code == 0 and lines == [], lines[-20:]
  rows = _check_root(out, photos)
  assert len(rows) == len(photos) == 2000
  _no_debris(out)
  print(f'full disk, then --skip_existing: {len(rows)} images exact')
