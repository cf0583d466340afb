"""Progress: bounded-rate reports from workers, a live bar on a terminal, log lines else."""

import io
import json
import os
import pty
import re
import subprocess
import sys
import threading
import time

from tests import fixtures
from tests.conftest import REPO
from transforms import progress


def test_progress_line_shows_count_rate_eta_and_failures():
  # The first range finished at 1 s with 200 images done: 1000 more in 2 s since.
  line = progress.progress_line(1200, 3, 4000, False, 3.0, steady=(1.0, 200))
  assert line.startswith('[#######.................] 1200/4000 (30%) 500 img/s ETA 5s')
  assert line.endswith(', 3 failed')
  assert '~4000' in progress.progress_line(10, 0, 4000, True, 1.0)
  assert progress.progress_line(50, 0, None, False, 2.0) == '50 images, 25 img/s'


def test_no_eta_until_a_range_has_finished():
  # Start-up (workers starting, first reads) is not the rate: no ETA before a range ends.
  line = progress.progress_line(1200, 0, 4000, False, 3.0)
  assert line.startswith('[#######.................] 1200/4000 (30%) 400 img/s')
  assert 'ETA' not in line


def test_the_monitor_starts_the_eta_when_the_first_range_finishes():
  stream = io.StringIO()
  monitor = progress.ProgressMonitor(stream=stream, log_interval=0.05, show_after=0,
                                     refresh=0.05)
  monitor.set_total(1000)
  monitor.start()
  sender = progress.ProgressSender(monitor.address, interval=0)
  try:
    sender.count('written', 100)
    _until(lambda: '100/1000' in stream.getvalue(), what='a line with 100 done')
    assert 'ETA' not in stream.getvalue()
    sender.count(progress.RANGES)
    sender.count('written', 100)
    _until(lambda: 'ETA' in stream.getvalue(), what='an ETA once a range finished')
    first_eta = next(l for l in stream.getvalue().splitlines() if 'ETA' in l)
    assert '200/1000' in first_eta or '100/1000' in first_eta
  finally:
    sender.close()
    monitor.stop()
  # Ranges are not images: the totals (and the closing line's counts) leave them out.
  assert monitor.totals() == {'written': 200, 'skipped': 0, 'failed': 0}
  assert monitor.ranges_done() == 1


def _until(condition, timeout=30.0, what='the condition'):
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, f'timed out waiting for {what}'
    time.sleep(0.01)


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
    # The closing datagrams carry the final counts; the monitor has them once they land.
    _until(lambda: monitor.totals() == {'written': 20000, 'skipped': 0, 'failed': 3},
           what='the closing counts')
    # at most one datagram per sender per half second, plus the closing ones
    assert monitor.messages <= 2 * (elapsed / 0.5 + 1) + 2
  finally:
    monitor.stop()


def test_stop_reads_what_was_sent_and_ends_the_thread_without_waiting_for_a_timeout():
  # A refresh of an hour: only stop()'s wake-up can end the thread's wait.
  monitor = progress.ProgressMonitor(stream=io.StringIO(), show_after=3600,
                                     refresh=3600).start()
  sender = progress.ProgressSender(monitor.address, interval=3600)
  sender.count('written', 7)
  sender.count('failed')
  sender.close()  # the closing datagram carries the counts
  monitor.stop()
  assert monitor.totals() == {'written': 7, 'skipped': 0, 'failed': 1}
  assert not [t for t in threading.enumerate() if t.name == 'unrecord-progress']


def _dataset(folder, count=1000):
  images = [fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(
      fixtures.photo(i % 5, 96, 96)))}) for i in range(count)]
  return fixtures.write_tfrecord(str(folder / 'many.tfrecord'), images)


ARGS = ['--progress_interval', '0.5']


class _Held:
  """Runs the export with its workers held (SIGSTOP) from the moment they exist until
  `release()`: however fast this machine is, the run is still going while the launcher's
  progress display has time to show, so what it shows is certain, not a race."""

  def __init__(self, output, *args, stderr=None):
    import psutil
    self._psutil = psutil
    self.job = subprocess.Popen(
        [sys.executable, '-m', 'beam_jobs.cli', 'export', '--output', str(output), *args,
         *ARGS], cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=stderr if stderr is not None else subprocess.PIPE)
    launcher = psutil.Process(self.job.pid)
    _until(lambda: launcher.children(recursive=True), what='the worker processes')
    self.held = launcher.children(recursive=True)
    for process in self.held:
      process.suspend()

  def release(self):
    for process in self.held:
      try:
        process.resume()
      except self._psutil.NoSuchProcess:
        pass


def _progress_lines(text):
  return [line for line in text.splitlines() if line.startswith('unrecord: [')]


def test_log_lines_when_not_a_terminal_and_quiet_turns_them_off(tmp_path):
  path = _dataset(tmp_path)
  err = tmp_path / 'err'
  with open(err, 'w') as stream:
    held = _Held(tmp_path / 'a', '--input', path, stderr=stream)
    # Workers held, nothing written: the launcher still logs a line each interval.
    _until(lambda: '/1000 (' in ''.join(_progress_lines(err.read_text())), what='log lines')
    held.release()
    assert held.job.wait(300) == 0, err.read_text()[-3000:]
  text = err.read_text()
  lines = _progress_lines(text)
  assert len(lines) >= 2 and all('img/s' in line for line in lines)
  assert '\r' not in text

  err = tmp_path / 'quiet'
  with open(err, 'w') as stream:
    held = _Held(tmp_path / 'b', '--input', path, '--quiet', stderr=stream)
    # Held as long as the first run took to show its lines (after 2 s, then every
    # 0.5 s), twice over: a quiet run shows none.
    time.sleep(2 * (2.0 + 0.5))
    held.release()
    assert held.job.wait(300) == 0
  assert not _progress_lines(err.read_text())


def test_live_bar_on_a_terminal(tmp_path):
  path = _dataset(tmp_path)
  leader, follower = pty.openpty()
  held = _Held(tmp_path / 'tty', '--input', path, stderr=follower)
  os.close(follower)
  output = b''
  while b'\x1b[K' not in output:  # the bar is drawn while the workers are held
    output += os.read(leader, 65536)
  held.release()
  while True:
    try:
      chunk = os.read(leader, 65536)
    except OSError:
      break
    if not chunk:
      break
    output += chunk
  assert held.job.wait(timeout=300) == 0
  text = output.decode('utf-8', 'replace')
  assert '\r' in text and '\x1b[K' in text  # redrawn in place, line cleared
  assert '/1000 (' in text


def test_the_command_shows_no_eta_before_a_range_has_finished(tmp_path):
  """One file is one record range: until it ends (the run's end) there is no ETA. Its
  workers are stopped mid-run, after some images are written, so the lines printed
  meanwhile show images done and none to time from."""
  import psutil
  path = _dataset(tmp_path, count=1000)
  out, err = tmp_path / 'out', tmp_path / 'err'
  with open(err, 'w') as stream:
    job = subprocess.Popen(
        [sys.executable, '-m', 'beam_jobs.cli', 'export', '--input', path, '--output',
         str(out), '--progress_interval', '0.2'], cwd=REPO, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=stream)
    _until(lambda: out.exists() and len([n for n in os.listdir(out)
                                         if n.endswith('.png')]) >= 64,
           timeout=120, what='the first images')
    held = psutil.Process(job.pid).children(recursive=True)
    for process in held:
      process.suspend()
    try:
      _until(lambda: any(_done(line) for line in _progress_lines(err.read_text())),
             timeout=60, what='a line with images done')
      mark = len(_progress_lines(err.read_text()))
      _until(lambda: len(_progress_lines(err.read_text())) >= mark + 2,
             what='two more lines while held')
    finally:
      for process in held:
        try:
          process.resume()
        except psutil.NoSuchProcess:
          pass
    assert job.wait(300) == 0, err.read_text()[-3000:]
  lines = _progress_lines(err.read_text())
  during = [line for line in lines if _done(line)]
  assert during, lines
  assert not [line for line in during if 'ETA' in line], during


def _done(line):
  """Images done on a progress line, when some are and not all: '[...] 240/1000 (24%)'."""
  done, total = line.split('] ', 1)[1].split(' ', 1)[0].split('/')
  return 0 < int(done) < int(total.lstrip('~'))


def test_each_worker_process_sends_its_counts_once(tmp_path):
  """One sender a worker process, however many DoFn instances it holds; the run's log
  says how many the launcher heard, and from how many processes. The counts still add
  up to every image."""
  path = _dataset(tmp_path, count=600)
  out = tmp_path / 'out'
  done = subprocess.run(
      [sys.executable, '-m', 'beam_jobs.cli', 'export', '--input', path, '--output',
       str(out), '--direct_num_workers', '2', '--split_size_mb', '4', *ARGS], cwd=REPO,
      capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.load(open(out / '_report.json'))['written'] == 600
  (log,) = (out / '_logs').iterdir()
  (line,) = [l for l in log.read_text().splitlines() if 'progress: ' in l]
  senders, processes = map(int, re.search(r'(\d+) sender\(s\) in (\d+) worker', line).groups())
  assert 1 <= processes <= 2 and senders == processes, line
