"""Progress: bounded-rate reports from workers, a live bar on a terminal, log lines else."""

import io
import os
import pty
import subprocess
import sys
import time

from tests import fixtures
from tests.conftest import REPO
from transforms import progress


def test_progress_line_shows_count_rate_eta_and_failures():
  line = progress.progress_line(1200, 3, 4000, False, 3.0)
  assert line.startswith('[#######.................] 1200/4000 (30%) 400 img/s ETA 7s')
  assert line.endswith(', 3 failed')
  assert '~4000' in progress.progress_line(10, 0, 4000, True, 1.0)
  assert progress.progress_line(50, 0, None, False, 2.0) == '50 images, 25 img/s'


def test_workers_report_at_a_bounded_rate_and_counts_add_up():
  monitor = progress.ProgressMonitor(stream=io.StringIO(), show_after=3600).start()
  try:
    senders = [progress.ProgressSender(monitor.address, interval=0.5) for _ in range(2)]
    started = time.monotonic()
    for i in range(20000):
      senders[i % 2].count('written')
    senders[0].count('failed', 3)
    elapsed = time.monotonic() - started
    for sender in senders:
      sender.close()
    time.sleep(0.5)
    assert monitor.totals() == {'written': 20000, 'skipped': 0, 'failed': 3}
    # at most one datagram per sender per half second, plus the closing ones
    assert monitor.messages <= 2 * (elapsed / 0.5 + 1) + 2
  finally:
    monitor.stop()


def _dataset(folder, count=1000):
  images = [fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(
      fixtures.photo(i % 5, 96, 96)))}) for i in range(count)]
  return fixtures.write_tfrecord(str(folder / 'many.tfrecord'), images)


ARGS = ['--png_encoder', 'opencv', '--png_compression', '9', '--direct_num_workers', '1']


def test_log_lines_when_not_a_terminal_and_quiet_turns_them_off(unrecord, tmp_path):
  path = _dataset(tmp_path)
  result = unrecord('export', '--input', path, '--output', str(tmp_path / 'a'), *ARGS,
                    '--progress_interval', '0.5')
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith('unrecord: [')]
  assert lines, result.stderr[-3000:]
  assert '/1000 (' in lines[-1] and 'img/s' in lines[-1]
  assert '\r' not in result.stderr
  quiet = unrecord('export', '--input', path, '--output', str(tmp_path / 'b'), *ARGS,
                   '--progress_interval', '0.5', '--quiet')
  assert quiet.returncode == 0
  assert not [l for l in quiet.stderr.splitlines() if l.startswith('unrecord: [')]


def test_live_bar_on_a_terminal(tmp_path):
  path = _dataset(tmp_path)
  leader, follower = pty.openpty()
  job = subprocess.Popen(
      [sys.executable, '-m', 'beam_jobs.cli', 'export', '--input', path, '--output',
       str(tmp_path / 'tty'), *ARGS], cwd=REPO, stdin=subprocess.DEVNULL,
      stdout=subprocess.DEVNULL, stderr=follower)
  os.close(follower)
  output = b''
  while True:
    try:
      chunk = os.read(leader, 65536)
    except OSError:
      break
    if not chunk:
      break
    output += chunk
  assert job.wait(timeout=300) == 0
  text = output.decode('utf-8', 'replace')
  assert '\r' in text and '\x1b[K' in text  # redrawn in place, line cleared
  assert '/1000 (' in text
