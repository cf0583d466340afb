"""A launcher killed with SIGKILL takes its local workers with it, and its folder goes."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from beam_jobs import worker
from tests.conftest import REPO, run_unrecord
from tests.test_crash_safety import _check_complete, _dataset

# The workers die by the kernel's SIGKILL (or a pipe's end-of-file) as the launcher's
# exit ends: measured here 6-105 ms, against 0.30-0.45 s before, when they polled for it
# every 0.5 s and wrote 279-396 more images meanwhile. The issue asks for 100 ms; the
# bound is wider because the time is measured by this test's own polling, on a shared
# 2-core machine where the test itself may not run for tens of milliseconds (105 ms was
# measured with 0 files written after the kill: the test's lag, not the workers'). The
# old polling's death (0 to 0.5 s after the kill) mostly exceeds it; the folder sweep
# below fails the old code every time.
DEATH_BOUND_SECONDS = 0.25


@pytest.fixture
def short_temp_dir():
  """A TMPDIR of its own (short: a Unix socket's path is limited to 107 bytes)."""
  folder = tempfile.mkdtemp(prefix='ur-life-', dir='/tmp')
  yield folder
  shutil.rmtree(folder, ignore_errors=True)


def _files(out):
  return sorted(name for name in os.listdir(out) if not name.startswith('_'))


def _gone(pid):
  try:
    return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # runs no code
  except psutil.NoSuchProcess:
    return True


def _launch(module, args, env):
  """The launcher `python -m module args`, in a session of its own (so a failed test can
  stop whatever survived by its group)."""
  return subprocess.Popen([sys.executable, '-m', module, *args], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)


def _workers_once_running(job, out):
  """The launcher's process tree once 100 images are written (the kill lands mid-run)."""
  deadline = time.time() + 240
  while time.time() < deadline and job.poll() is None and not (
      out.exists() and sum(n.endswith('.png') for n in os.listdir(out)) >= 100):
    time.sleep(0.01)
  return psutil.Process(job.pid).children(recursive=True)


def _kill_the_launcher(job, tree, out):
  """SIGKILL of the launcher alone, then ({worker pid: seconds it outlived the launcher},
  the files once every worker was gone, the files 1.5 s later)."""
  os.kill(job.pid, signal.SIGKILL)
  killed = time.monotonic()
  job.wait()
  alive, lifetimes = {p.pid for p in tree}, {}
  while alive and time.monotonic() - killed < 10:
    for pid in [p for p in alive if _gone(p)]:
      lifetimes[pid] = time.monotonic() - killed
      alive.discard(pid)
    time.sleep(0.002)
  assert not alive, f'still running 10 s after the launcher was killed: {alive}'
  all_gone = _files(out)
  time.sleep(1.5)
  return lifetimes, all_gone, _files(out)


def test_killing_the_launcher_stops_its_workers_at_once_and_a_rerun_is_exact(
    tmp_path, short_temp_dir):
  expected = _dataset(tmp_path, 2000, size=64)
  out = tmp_path / 'out'
  env = dict(os.environ, TMPDIR=short_temp_dir)
  # A live process's folder never goes, whatever it holds.
  live = os.path.join(short_temp_dir, f'{worker.FOLDER_PREFIX}{os.getpid()}-live')
  os.mkdir(live)
  args = ['export', '--input', str(tmp_path / '*.tfrecord'), '--output', str(out),
          '--skip_existing', '--png_encoder', 'opencv', '--quiet',
          '--direct_num_workers', '2']
  job = _launch('beam_jobs.cli', args, env)
  try:
    tree = _workers_once_running(job, out)
    commands = [' '.join(p.cmdline()) for p in tree]
    ours = [c for c in commands if c.startswith(f'{sys.executable} -m beam_jobs.worker')]
    assert sum(' --client ' in c for c in ours) == 2, commands  # the runner's shims
    assert sum(' --serve ' in c for c in ours) == 3, commands  # the importer, 2 forked
    pool_folders = [n for n in os.listdir(short_temp_dir)
                    if n.startswith(worker.FOLDER_PREFIX) and n != os.path.basename(live)]
    assert len(pool_folders) == 1, pool_folders

    at_kill = _files(out)
    lifetimes, all_gone, later = _kill_the_launcher(job, tree, out)
  finally:
    try:
      os.killpg(job.pid, signal.SIGKILL)  # whatever survived, if the test failed
    except ProcessLookupError:
      pass
  slowest = max(lifetimes.values())
  print(f'launcher killed with {len(at_kill)} of {len(expected)} images written; its '
        f'{len(tree)} worker processes gone within {slowest * 1000:.0f} ms; '
        f'{len(later) - len(at_kill)} files appeared after the kill')
  assert 0 < len(at_kill) < len(expected), 'the kill must land mid-run'
  assert slowest < DEATH_BOUND_SECONDS, lifetimes
  # Nothing is written once they are gone. (Until then, a few: the kernel signals them
  # only as the launcher's exit ends, after its memory is freed; 0-17 files were seen
  # here under load, against 279-396 before.)
  assert later == all_gone

  # At once, the same command: complete and exact, and the dead launcher's folder swept.
  assert os.path.isdir(os.path.join(short_temp_dir, pool_folders[0]))
  result = run_unrecord(*args, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  _check_complete(str(out), expected)
  assert sorted(n for n in os.listdir(short_temp_dir)
                if n.startswith(worker.FOLDER_PREFIX)) == [os.path.basename(live)]


def test_the_sweep_removes_only_folders_of_dead_launchers(tmp_path):
  finished = subprocess.Popen([sys.executable, '-c', 'pass'])
  finished.wait()  # a pid that no process has now
  dead = tmp_path / f'{worker.FOLDER_PREFIX}{finished.pid}-abc'
  (dead / 'sub').mkdir(parents=True)
  (dead / 'workers.sock').write_bytes(b'')
  live = tmp_path / f'{worker.FOLDER_PREFIX}{os.getpid()}-abc'
  other_user = tmp_path / f'{worker.FOLDER_PREFIX}1-abc'  # init: alive, another user's
  unknown = tmp_path / f'{worker.FOLDER_PREFIX}abc'  # no pid in the name: not ours to judge
  unrelated = tmp_path / f'unrecord-{finished.pid}-abc'
  for folder in (live, other_user, unknown, unrelated):
    folder.mkdir()
  assert worker.sweep_stale_folders(str(tmp_path)) == [str(dead)]
  assert sorted(os.listdir(tmp_path)) == sorted(
      p.name for p in (live, other_user, unknown, unrelated))


def test_killing_a_launcher_without_a_warm_pool_stops_beams_own_workers(
    tmp_path, short_temp_dir):
  """`python -m beam_jobs.export_images` (and the demo) start no warm pool: Beam starts
  `beam_jobs.worker --cold` workers itself, and they must die with the launcher too."""
  expected = _dataset(tmp_path, 2000, size=64)
  out = tmp_path / 'out'
  env = dict(os.environ, TMPDIR=short_temp_dir)
  args = ['--input', str(tmp_path / '*.tfrecord'), '--output', str(out),
          '--skip_existing', '--png_encoder', 'opencv', '--quiet',
          '--direct_num_workers', '2']
  job = _launch('beam_jobs.export_images', args, env)
  try:
    tree = _workers_once_running(job, out)
    commands = [' '.join(p.cmdline()) for p in tree]
    assert sum(' -m beam_jobs.worker --cold ' in c for c in commands) == 2, commands
    lifetimes, all_gone, later = _kill_the_launcher(job, tree, out)
  finally:
    try:
      os.killpg(job.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
  assert 0 < len(all_gone) < len(expected), 'the kill must land mid-run'
  assert max(lifetimes.values()) < DEATH_BOUND_SECONDS, lifetimes
  assert later == all_gone
  result = run_unrecord('export', *args, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  _check_complete(str(out), expected)
