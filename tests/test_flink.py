"""The export on a real Flink 1.19.3 cluster (`make flink-up`), with Beam 2.77's SDK and the
2.62 job server built from deploy/flink/job-server/pom.xml.

One cluster serves the whole module and the inputs are small: most of a Flink run's
wall is the cluster's fixed start-up of a job. Every run gets the jar or the job endpoint,
so Beam never downloads a job server (checked). The cluster has 2 slots; runs use
--parallelism 2 and LOOPBACK workers unless a test says otherwise.
"""

import hashlib
import json
import os
import subprocess
import sys
import time

import cv2
import numpy as np
import psutil
import pytest

from tests import emulators
from tests import fixtures
from tests import flink_cluster
from tests import outputs
from tests.conftest import REPO, run_unrecord
from transforms.inputs import tfrecord

# One cluster of two slots for the whole suite: under pytest-xdist these tests run on one
# worker, in order, so two of them never compete for its slots.
pytestmark = pytest.mark.xdist_group('flink')

SHARDS = 3
PER_SHARD = 6
BIG = 400  # 64x64 photos, about 4.9 MB: five ranges at --split_size_mb 1
BEAM_JARS = os.path.expanduser('~/.apache_beam/cache/jars')
MAIN_JOB = flink_cluster.unique_job_name('unrecord-test-main')
# What a run writes that differs by run by design: its identity, times, the report.
PER_RUN = {'_report.json', '_report.html', '_unrecord_run.json', '_unrecord_state.json',
           '_SUCCESS', '_manifest/_parts.json'}


def _record(image, ident, label):
  return fixtures.example({
      'image': fixtures.bytes_feature(fixtures.serialized_tensor(image)),
      'id': fixtures.bytes_feature(ident.encode()),
      'label': fixtures.int64_feature(label)})


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  """Several shards, one file big enough to split, one damaged shard; the expected
  pixels, id and label of each (source name, index)."""
  folder = tmp_path_factory.mktemp('flink-in')
  expected = {}
  for s in range(SHARDS):
    images = [fixtures.photo(s * PER_SHARD + i, 32, 40) for i in range(PER_SHARD)]
    fixtures.write_tfrecord(str(folder / f'shard-{s}.tfrecord'), [
        _record(p, f's{s}r{i}', (s + i) % 3) for i, p in enumerate(images)])
    expected.update({(f'shard-{s}', i): (p, f's{s}r{i}', (s + i) % 3)
                     for i, p in enumerate(images)})
  images = [fixtures.photo(i, 64, 64) for i in range(BIG)]
  fixtures.write_tfrecord(str(folder / 'big.tfrecord'), [
      _record(p, f'big{i}', i % 5) for i, p in enumerate(images)])
  expected.update({('big', i): (p, f'big{i}', i % 5) for i, p in enumerate(images)})
  # A damaged shard: a record without the image feature, and one whose payload is
  # corrupt (CRC mismatch), between good ones.
  good = [fixtures.photo(90 + i, 32, 40) for i in range(3)]
  frames = [tfrecord.encode_record(_record(good[0], 'd0', 0)),
            tfrecord.encode_record(fixtures.example({'label': fixtures.int64_feature(1)})),
            tfrecord.encode_record(_record(good[1], 'd2', 2)),
            tfrecord.encode_record(_record(good[2], 'd3', 0))]
  damaged = bytearray(b''.join(frames))
  damaged[sum(map(len, frames[:3])) + 30] ^= 0xFF
  (folder / 'damaged.tfrecord').write_bytes(bytes(damaged))
  expected.update({('damaged', 0): (good[0], 'd0', 0), ('damaged', 2): (good[1], 'd2', 2)})
  return str(folder), expected


def _args(folder, out, *extra):
  return ['export', '--input', os.path.join(folder, '*.tfrecord'), '--output', out,
          '--split_size_mb', '1', '--max_failures', '2', '--incremental', *extra]


def _jars():
  return sorted(os.listdir(BEAM_JARS)) if os.path.isdir(BEAM_JARS) else []


@pytest.fixture(scope='module')
def runs(data, tmp_path_factory):
  """The same export on DirectRunner, the embedded portable job service and the cluster
  (FlinkRunner with the jar built here)."""
  flink_cluster.require()
  folder, _ = data
  root = tmp_path_factory.mktemp('flink-runs')
  jars_before = _jars()
  results = {}
  for name, runner in (
      ('flink', flink_cluster.FLINK_RUNNER + ['--job_name', MAIN_JOB]),
      ('direct', []),
      ('embedded', ['--runner', 'PortableRunner', '--job_endpoint', 'embed',
                    '--environment_type', 'LOOPBACK'])):
    out = str(root / name)
    results[name] = (out, run_unrecord(*_args(folder, out, *runner)))
  assert _jars() == jars_before, 'Beam downloaded a jar'
  return results


def _listing(out):
  """Every file under `out` but the runs' logs (`_logs/`, named by each run's time)."""
  names = set()
  for parent, folders, files in os.walk(out):
    if parent == out and '_logs' in folders:
      folders.remove('_logs')
    names |= {os.path.relpath(os.path.join(parent, f), out) for f in files}
  return names


def _rgb(path):
  return cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)


def test_export_on_flink_is_pixel_exact_with_ids_and_labels(runs, data):
  out, result = runs['flink']
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'runner FlinkRunner' in result.stderr
  _, expected = data
  rows = outputs.manifest_rows(out)
  assert len(rows) == len(expected) == SHARDS * PER_SHARD + BIG + 2
  for row in rows:
    stem = os.path.basename(row['source']).rsplit('.', 1)[0]
    pixels, ident, label = expected[(stem, row['index'])]
    assert row['path'] == f'{stem}-{row["index"]:06d}.png'
    assert (row['id'], row['label']) == (ident, label)
    assert np.array_equal(_rgb(os.path.join(out, row['path'])), pixels), row['path']
  assert os.path.exists(os.path.join(out, '_SUCCESS'))
  report = json.load(open(os.path.join(out, '_report.json')))
  assert (report['written'], report['failed']) == (len(expected), 2)
  assert report['work']['ranges'] >= SHARDS + 1 + 4  # the big file was split
  assert f'written {len(expected)} ' in result.stderr and 'failed 2' in result.stderr


def _image_bytes(out):
  return {name: hashlib.sha256(open(os.path.join(out, name), 'rb').read()).hexdigest()
          for name in _listing(out) - PER_RUN}


def _dead_letter_rows(out):
  rows = [json.loads(line) for line in open(os.path.join(out, '_dead_letter.jsonl'))]
  return [{k: v for k, v in row.items() if 'time' not in k} for row in rows]


def test_direct_embedded_and_flink_give_the_same_output(runs):
  for name, (out, result) in runs.items():
    assert result.returncode == 0, (name, result.stderr[-3000:])
  flink, direct, embedded = (runs[n][0] for n in ('flink', 'direct', 'embedded'))
  assert _listing(flink) == _listing(direct) == _listing(embedded)
  assert _image_bytes(flink) == _image_bytes(direct) == _image_bytes(embedded)
  assert outputs.manifest_rows(flink) == outputs.manifest_rows(direct) == \
      outputs.manifest_rows(embedded)
  rows = _dead_letter_rows(flink)
  assert [(r['reason'], os.path.basename(r['source']), r['index']) for r in rows] == [
      ('missing_feature', 'damaged.tfrecord', 1), ('crc_mismatch', 'damaged.tfrecord', 3)]
  assert rows == _dead_letter_rows(direct) == _dead_letter_rows(embedded)


def test_the_job_ran_on_both_slots(runs):
  assert runs['flink'][1].returncode == 0, runs['flink'][1].stderr[-3000:]
  job = flink_cluster.job_named(MAIN_JOB)
  assert job['state'] == 'FINISHED'
  ranges = flink_cluster.records_per_subtask(job, 'Export/{Export')
  # Each of the 2 subtasks of the step that exports ranges was given some of them.
  assert len(ranges) == flink_cluster.SLOTS and all(n > 0 for n in ranges), ranges


def test_a_damaged_shard_is_dead_lettered_and_fails_the_run(data, tmp_path):
  flink_cluster.require()
  folder, expected = data
  out = str(tmp_path / 'damaged')
  result = run_unrecord('export', '--input', os.path.join(folder, 'damaged.tfrecord'),
                        '--input', os.path.join(folder, 'shard-0.tfrecord'),
                        '--output', out, *flink_cluster.PORTABLE)
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'failed 2 (crc_mismatch: 1, missing_feature: 1)' in result.stderr
  assert 'exit 1: failures 2 > --max_failures 0' in result.stderr
  assert not os.path.exists(os.path.join(out, '_SUCCESS'))
  assert [(r['reason'], r['index']) for r in _dead_letter_rows(out)] == [
      ('missing_feature', 1), ('crc_mismatch', 3)]
  replay = fixtures.read_with_tf(os.path.join(out, '_dead_letter.tfrecord'))
  assert replay == [fixtures.example({'label': fixtures.int64_feature(1)})]
  for index in (0, 2):
    assert np.array_equal(_rgb(os.path.join(out, f'damaged-{index:06d}.png')),
                          expected[('damaged', index)][0])
  again = run_unrecord('export', '--input', os.path.join(folder, 'damaged.tfrecord'),
                       '--input', os.path.join(folder, 'shard-0.tfrecord'),
                       '--output', out, '--max_failures', '2',
                       *flink_cluster.PORTABLE)
  assert again.returncode == 0, again.stderr[-3000:]
  assert os.path.exists(os.path.join(out, '_SUCCESS'))


def _mtimes(out):
  return {name: os.stat(os.path.join(out, name)).st_mtime_ns
          for name in _listing(out) - PER_RUN if not name.startswith('_')}


def test_skip_existing_then_incremental_match_direct_runner(runs, data):
  """Re-runs on the cluster and on DirectRunner, into the first runs' outputs."""
  folder, expected = data
  flink_out, direct_out = runs['flink'][0], runs['direct'][0]
  before = _mtimes(flink_out)
  for out, runner in ((flink_out, flink_cluster.PORTABLE), (direct_out, [])):
    result = run_unrecord('export', '--input', os.path.join(folder, '*.tfrecord'),
                          '--output', out, '--split_size_mb', '1', '--max_failures', '2',
                          '--skip_existing', *runner)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'written 0 (passthrough 0), skipped {len(expected)}' in result.stderr
  assert _mtimes(flink_out) == before  # nothing rewritten
  assert _listing(flink_out) == _listing(direct_out)
  # --incremental: a new shard is the only work of the next run.
  fixtures.write_tfrecord(os.path.join(folder, 'shard-new.tfrecord'), [
      _record(fixtures.photo(70 + i, 32, 40), f'n{i}', i) for i in range(4)])
  for out, runner in ((flink_out, flink_cluster.PORTABLE), (direct_out, [])):
    result = run_unrecord(*_args(folder, out, *runner))
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'written 4 (passthrough 0), skipped 0, failed 0' in result.stderr
  assert _mtimes(flink_out).items() >= before.items()
  assert _listing(flink_out) == _listing(direct_out)
  assert outputs.manifest_rows(flink_out) == outputs.manifest_rows(direct_out)
  assert len(outputs.manifest_rows(flink_out)) == len(expected) + 4


def test_flink_submit_uber_jar(data, tmp_path):
  """FlinkRunner with --flink_submit_uber_jar: the pipeline rides inside a copy of the
  job-server jar, uploaded to the cluster's REST API; no job server process runs."""
  flink_cluster.require()
  folder, expected = data
  out = str(tmp_path / 'uber')
  jars_before = _jars()
  name = flink_cluster.unique_job_name('unrecord-test-uber')
  result = run_unrecord('export', '--input', os.path.join(folder, 'shard-1.tfrecord'),
                        '--output', out, *flink_cluster.FLINK_RUNNER,
                        '--flink_submit_uber_jar', '--job_name', name)
  assert result.returncode == 0, result.stderr[-3000:]
  assert _jars() == jars_before
  assert flink_cluster.job_named(name)['state'] == 'FINISHED'
  rows = outputs.manifest_rows(out)
  assert len(rows) == PER_SHARD
  for row in rows:
    assert np.array_equal(_rgb(os.path.join(out, row['path'])),
                          expected[('shard-1', row['index'])][0])


KILLED = 300  # 96x96 photos at zlib level 9: a few seconds of work to kill a worker in


@pytest.fixture
def worker_pool():
  """Beam's worker pool on 127.0.0.1, as the Kubernetes sidecar runs it."""
  with emulators.worker_pool() as pool:
    yield pool


def test_a_python_worker_killed_mid_run_is_retried_and_nothing_is_lost(worker_pool,
                                                                      tmp_path):
  flink_cluster.require()
  pool, address = worker_pool
  folder = tmp_path / 'in'
  folder.mkdir()
  photos = [fixtures.photo(i, 96, 96) for i in range(KILLED)]
  for s in range(4):
    fixtures.write_tfrecord(str(folder / f'k{s}.tfrecord'), [
        _record(p, f'k{s}-{i}', 0) for i, p in enumerate(photos[s::4])])
  out = str(tmp_path / 'out')
  name = flink_cluster.unique_job_name('unrecord-test-killed')
  command = ['export', '--input', str(folder / '*.tfrecord'), '--output', out,
             '--png_encoder', 'opencv', '--png_compression', '9',
             '--runner', 'PortableRunner', '--job_endpoint', flink_cluster.JOB_ENDPOINT,
             '--environment_type', 'EXTERNAL', '--environment_config', address,
             '--parallelism', '2', '--job_name', name]
  run = subprocess.Popen([sys.executable, '-m', 'beam_jobs.cli', *command], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and run.poll() is None:
    written = len([n for n in os.listdir(out) if n.endswith('.png')]) \
        if os.path.isdir(out) else 0
    workers = psutil.Process(pool.pid).children()
    if written >= 10 and workers:
      break
    time.sleep(0.05)
  assert run.poll() is None and written < KILLED, 'the run ended before a worker was killed'
  workers[0].kill()  # SIGKILL one SDK worker process mid-run
  _, stderr = run.communicate(timeout=300)
  job = flink_cluster.job_named(name)
  exceptions = flink_cluster.rest(f'/jobs/{job["jid"]}/exceptions')
  assert exceptions['exceptionHistory']['entries'], 'Flink saw no failure'
  # The cluster's restart strategy ran the failed tasks again: the job finished whole.
  assert run.returncode == 0, stderr[-3000:]
  assert job['state'] == 'FINISHED'
  assert f'written {KILLED} ' in stderr
  rows = outputs.manifest_rows(out)
  assert len(rows) == KILLED and os.path.exists(os.path.join(out, '_SUCCESS'))
  for row in rows:
    s = int(row['source'][-10])
    assert np.array_equal(_rgb(os.path.join(out, row['path'])),
                          photos[s + 4 * row['index']]), row['path']
  again = run_unrecord(*command[:command.index('--runner')], '--skip_existing',
                       *flink_cluster.PORTABLE)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f'written 0 (passthrough 0), skipped {KILLED}, failed 0' in again.stderr


def _closing(stderr):
  return [l for l in stderr.splitlines() if l.startswith('unrecord export: ')][-1]


def test_progress_live_counts_and_work_rate_under_loopback(data, tmp_path):
  """LOOPBACK workers run in the launcher, so the progress display works with a real
  job endpoint; the closing line gives the rate while working beside the wall rate."""
  flink_cluster.require()
  folder, _ = data
  out = str(tmp_path / 'progress')
  result = run_unrecord('export', '--input', os.path.join(folder, 'shard-2.tfrecord'),
                        '--output', out, '--progress_interval', '0.5',
                        *flink_cluster.PORTABLE)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith('unrecord: [')]
  assert lines and all(f'/{PER_SHARD} (' in l for l in lines), result.stderr[-3000:]
  report = json.load(open(os.path.join(out, '_report.json')))
  work = report['work']
  closing = _closing(result.stderr)
  assert (f'({report["images_per_second"]} images/s; '
          f'{PER_SHARD / work["seconds"]:.0f} images/s working, after '
          f'{work["startup_seconds"]:.1f} s of start-up)') in closing, closing


def test_no_job_server_fails_at_launch_in_one_line(data, tmp_path):
  folder, _ = data
  started = time.time()
  with emulators.refused_port() as port:
    result = run_unrecord('export', '--input', os.path.join(folder, 'shard-0.tfrecord'),
                          '--output', str(tmp_path / 'out'), '--runner', 'PortableRunner',
                          '--job_endpoint', f'localhost:{port}', '--environment_type',
                          'LOOPBACK', timeout=120)
  assert result.returncode == 3, result.stderr[-3000:]
  assert time.time() - started < 60  # Beam alone waits 300 s per call
  assert result.stderr.strip().splitlines()[-1] == (
      f'unrecord export: error: no job server answers at localhost:{port} '
      '(--job_endpoint); start it (here: make flink-up) or check the address; nothing '
      'was submitted')
  assert 'Traceback' not in result.stderr
  with emulators.refused_port() as dead:
    result = run_unrecord('export', '--input', os.path.join(folder, 'shard-0.tfrecord'),
                          '--output', str(tmp_path / 'out2'), '--runner', 'FlinkRunner',
                          '--flink_master', f'127.0.0.1:{dead}', '--flink_job_server_jar',
                          flink_cluster.JAR, '--environment_type', 'LOOPBACK', timeout=120)
  assert result.returncode == 3, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == (
      "unrecord export: error: the Flink cluster's REST API does not answer at "
      f'127.0.0.1:{dead} (--flink_master); check that the cluster is up (here: make '
      'flink-up) and the address; nothing was submitted')


def test_flink_runner_without_a_jar_is_refused_rather_than_downloading_one(data, tmp_path):
  folder, _ = data
  jars_before = _jars()
  result = run_unrecord('export', '--input', os.path.join(folder, 'shard-0.tfrecord'),
                        '--output', str(tmp_path / 'out'), '--runner', 'FlinkRunner',
                        '--flink_master', flink_cluster.FLINK_MASTER, timeout=120)
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'FlinkRunner needs --flink_job_server_jar JAR or --job_endpoint' in \
      result.stderr.strip().splitlines()[-1]
  assert _jars() == jars_before


@pytest.fixture
def job_server_without_cluster(tmp_path):
  """A second job server whose Flink master does not answer: the cluster is down."""
  ports = [emulators.free_port() for _ in range(4)]
  process = subprocess.Popen(
      ['java', '-jar', flink_cluster.JAR, '--flink-master', f'127.0.0.1:{ports[0]}',
       '--job-host', '127.0.0.1', '--job-port', str(ports[1]), '--artifact-port',
       str(ports[2]), '--expansion-port', str(ports[3]), '--artifacts-dir',
       str(tmp_path / 'artifacts')], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while not flink_cluster.cluster._accepts(ports[1]):
      assert process.poll() is None and time.time() < deadline, 'job server did not start'
      time.sleep(0.2)
    yield f'localhost:{ports[1]}'
  finally:
    process.kill()
    process.wait(30)


def test_a_cluster_that_is_down_behind_the_job_server_is_named(data, tmp_path,
                                                               job_server_without_cluster):
  flink_cluster.require()
  folder, _ = data
  result = run_unrecord('export', '--input', os.path.join(folder, 'shard-0.tfrecord'),
                        '--output', str(tmp_path / 'out'), '--runner', 'PortableRunner',
                        '--job_endpoint', job_server_without_cluster,
                        '--environment_type', 'LOOPBACK', timeout=200)
  assert result.returncode == 3, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('unrecord export: error: the job server could not submit the job '
                         'to the Flink cluster; check that the cluster is up'), last
  assert 'nothing was written; no _SUCCESS' in last and '--skip_existing' not in last
  # Beam's own copy of the error (ERROR:root:...) goes to Beam's log, not the terminal.
  assert 'ERROR:root' not in result.stderr and 'Connection refused' not in \
      result.stderr.replace(last, '')


def test_a_taskmanager_killed_for_good_ends_in_one_line(tmp_path):
  """It kills the cluster's TaskManager, then starts it again and waits until the dead
  one is unregistered, so the tests after it find live slots."""
  flink_cluster.require()
  folder = tmp_path / 'in'
  folder.mkdir()
  for s in range(4):
    fixtures.write_tfrecord(str(folder / f't{s}.tfrecord'), [
        _record(fixtures.photo(s + 4 * i, 96, 96), f't{s}-{i}', 0) for i in range(75)])
  out = str(tmp_path / 'out')
  run = subprocess.Popen(
      [sys.executable, '-m', 'beam_jobs.cli', 'export', '--input', str(folder / '*.tfrecord'),
       '--output', out, '--png_encoder', 'opencv', '--png_compression', '9',
       *flink_cluster.PORTABLE], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  killed = []
  try:
    deadline = time.time() + 240
    while time.time() < deadline and run.poll() is None and not (
        os.path.isdir(out) and any(n.endswith('.png') for n in os.listdir(out))):
      time.sleep(0.05)
    assert run.poll() is None, 'the run ended before the TaskManager was killed'
    killed = flink_cluster.taskmanager_ids()
    os.kill(flink_cluster.cluster.running_pid('taskmanager'), 9)
    _, stderr = run.communicate(timeout=300)
  finally:
    flink_cluster.cluster.start('taskmanager')
    flink_cluster.wait_for_slots(gone=killed)
  assert run.returncode == 3, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  written = len([n for n in os.listdir(out) if n.endswith('.png')])
  assert last.startswith('unrecord export: error: the Flink cluster lost its TaskManager'), last
  assert f'image(s) written so far are in {out}; no _SUCCESS' in last, last
  assert 'what was written is on the runner' not in last
  assert not os.path.exists(os.path.join(out, '_SUCCESS'))
  report = json.load(open(os.path.join(out, '_report.json')))
  assert report['error'] in last
  assert 0 < report['reported_so_far']['written'] <= written, report


def _doc_block(page: str, after: str) -> str:
  """The first sh block of `page` after the text `after`, continuation lines joined."""
  text = open(os.path.join(REPO, page), encoding='utf-8').read()
  section = text.split(after, 1)[1]
  return section.split('```sh\n', 1)[1].split('```', 1)[0].replace('\\\n', ' ')


def _export_line(block: str) -> str:
  (command,) = [l for l in block.splitlines() if l.startswith('unrecord export ')]
  return command


def test_the_docs_flink_command_runs_on_the_demos_records(tmp_path):
  """docs/runners.md, "A local cluster": the command as written, on `make demo`'s
  records; README.md's Flink command is the same line."""
  import shlex  # pylint: disable=import-outside-toplevel
  from beam_jobs import demo  # pylint: disable=import-outside-toplevel
  flink_cluster.require()
  block = _doc_block('docs/runners.md', '### A local cluster: `make flink-up`')
  command = _export_line(block)
  assert 'make flink-up' in block and 'make flink-down' in block
  assert _export_line(_doc_block('README.md', '**5. On a cluster.**')) == command
  records = tmp_path / 'demo_out' / 'records'
  demo.build_sample(str(records))
  args = [a.replace('demo_out/', str(tmp_path / 'demo_out') + '/')
          .replace('out/flink', str(tmp_path / 'out' / 'flink'))
          for a in shlex.split(command)[1:]]
  result = run_unrecord(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  out = str(tmp_path / 'out' / 'flink')
  rows = outputs.manifest_rows(out)
  assert rows and os.path.exists(os.path.join(out, '_SUCCESS'))
  assert f'written {len(rows)} ' in result.stderr and 'runner PortableRunner' in result.stderr


def test_the_docs_flink_runner_command_is_the_one_these_tests_run():
  """docs/runners.md's FlinkRunner command passes exactly the runner options the `runs`
  fixture runs the cluster tests with (the jar built here, no download)."""
  import shlex  # pylint: disable=import-outside-toplevel
  block = _doc_block('docs/runners.md', 'FlinkRunner starts a job server of its own')
  words = shlex.split(_export_line(block))
  runner = words[words.index('--runner'):]
  jar = words[words.index('--flink_job_server_jar') + 1]
  assert os.path.join(REPO, jar) == flink_cluster.JAR
  assert [flink_cluster.JAR if w == jar else w for w in runner] == flink_cluster.FLINK_RUNNER


def test_an_endpoint_that_is_not_a_beam_job_server_fails_at_launch_in_one_line(data,
                                                                               tmp_path):
  """Two addresses a user may give instead of the job port: the job server's artifact
  port (gRPC, but not the job API, as a job server of a release this SDK cannot talk to
  answers) and Flink's REST port (HTTP/1, on which Beam waits 300 s for gRPC)."""
  flink_cluster.require()
  folder, _ = data
  cases = {
      f'localhost:{flink_cluster.cluster.ARTIFACT_PORT}': (
          f'localhost:{flink_cluster.cluster.ARTIFACT_PORT} (--job_endpoint) speaks gRPC but '
          "not Beam's job API (JobService/DescribePipelineOptions is not implemented there): "
          "it is not a Beam job server (a job server's artifact or expansion port, say), or "
          'one of a Beam release this SDK (2.77.0) cannot talk to; point --job_endpoint at '
          "the job server's job port (here: localhost:8099, make flink-up) and check the job "
          "server's Beam version"),
      f'localhost:{flink_cluster.cluster.REST_PORT}': (
          f"localhost:{flink_cluster.cluster.REST_PORT} (--job_endpoint) is Flink 1.19.3's "
          'REST API, not a Beam job server: give it to --runner FlinkRunner as '
          "--flink_master, or point --job_endpoint at the job server's job port (here: "
          'localhost:8099, make flink-up)'),
  }
  for endpoint, cause in cases.items():
    out = tmp_path / endpoint.replace(':', '_')
    started = time.time()
    result = run_unrecord('export', '--input', os.path.join(folder, 'shard-0.tfrecord'),
                          '--output', str(out), '--runner', 'PortableRunner',
                          '--job_endpoint', endpoint, '--environment_type', 'LOOPBACK',
                          timeout=120)
    assert result.returncode == 3, result.stderr[-3000:]
    assert time.time() - started < 60  # Beam alone waits 300 s, or retries for 6 s
    assert result.stderr.strip().splitlines()[-1] == (
        f'unrecord export: error: {cause}; nothing was submitted')
    assert 'Traceback' not in result.stderr and '_InactiveRpcError' not in result.stderr
    assert not out.exists()  # refused before the output was claimed


# A PCollection that feeds both a Flatten and a GroupByKey: the 2.62 job server's fuser
# fails on it (apache/beam#34647). A Flatten of two Reshuffled branches feeding both a
# multi-output ParDo and a CombineGlobally, as first reported, runs; this is what fails.
# Then Beam's own call to an endpoint that is not a job service, for its error text.
_REJECTED_JOBS = '''
import sys, traceback
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

def failure(endpoint, build):
  options = PipelineOptions(['--runner', 'PortableRunner', '--job_endpoint', endpoint,
                             '--environment_type', 'LOOPBACK', '--job_server_timeout', '30'])
  pipeline = beam.Pipeline(options=options)
  build(pipeline)
  try:
    pipeline.run().wait_until_finish()
  except Exception as e:
    return ''.join(traceback.format_exception(e))
  return 'NO ERROR'

def flatten_and_group(pipeline):
  a = pipeline | 'A' >> beam.Create([('a', 1)])
  b = pipeline | 'B' >> beam.Create([('b', 2)])
  _ = (a, b) | beam.Flatten() | 'Flattened' >> beam.Map(print)
  _ = a | beam.GroupByKey() | 'Grouped' >> beam.Map(print)

def anything(pipeline):
  _ = pipeline | beam.Create([1]) | beam.Map(print)

print(failure(sys.argv[1], flatten_and_group))
print('=' * 20)
print(failure(sys.argv[2], anything))
'''


def test_the_job_servers_known_failures_to_start_are_named_in_one_line():
  """The 2.62 job server's fusion error and a server without Beam's job API, each from
  a real run against the cluster's job server: their error texts become one cause that
  says nothing ran (so no --skip_existing advice)."""
  from beam_jobs import cluster  # pylint: disable=import-outside-toplevel
  flink_cluster.require()
  done = subprocess.run(
      [sys.executable, '-c', _REJECTED_JOBS, flink_cluster.JOB_ENDPOINT,
       f'localhost:{flink_cluster.cluster.ARTIFACT_PORT}'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  fusion, unimplemented = done.stdout.split('=' * 20)
  assert 'were consumed but never produced' in fusion, fusion[-3000:]
  assert 'StatusCode.UNIMPLEMENTED' in unimplemented, unimplemented[-3000:]
  cause, started = cluster.explain_failure(fusion)
  assert not started and '\n' not in cause and '--skip_existing' not in cause
  assert cause.startswith("the job server's fuser rejected the job's graph before "
                          'anything ran'), cause
  assert 'apache/beam#34647' in cause
  cause, started = cluster.explain_failure(unimplemented)
  assert not started and '\n' not in cause
  assert cause.startswith("the job server speaks gRPC but not Beam's job API "
                          '(JobService/DescribePipelineOptions is not implemented there)'), cause
  # Neither is mistaken for the other failures the module names.
  assert cluster.explain_failure('java.lang.RuntimeException: Pipeline failed') is None
