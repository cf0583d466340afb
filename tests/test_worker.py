"""Warm local workers (beam_jobs/worker.py): used when they can be, never a way to hang."""

import os
import subprocess
import sys
import threading
import time

import apache_beam as beam
import cv2
import numpy as np
import psutil
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import environments

from beam_jobs import local_runner
from beam_jobs import worker
from tests import fixtures
from tests import outputs
from tests.conftest import REPO
from transforms import ptransforms
from transforms.output import export_config


@pytest.mark.parametrize('argv, warm', [
    (['--input', 'x', '--output', 'y'], os.cpu_count() > 1),
    (['--direct_num_workers', '2'], True),
    (['--direct_num_workers=3'], True),
    (['--direct_num_workers', '1'], False),
    (['--runner', 'DataflowRunner'], False),
    (['--runner=PortableRunner'], False),
    (['--direct_running_mode', 'in_memory', '--direct_num_workers', '2'], False),
    (['--direct_num_workers', 'two'], False),
    (['--help'], False),
])
def test_a_pool_starts_only_for_local_multi_process_runs(argv, warm):
  pool = worker.start_for(argv)
  try:
    assert (pool is not None) == warm
  finally:
    if pool is not None:
      pool.close()


def _cmdlines(root):
  found = set()
  try:
    for child in psutil.Process(root).children(recursive=True):
      try:
        found.add((child.pid, child.ppid(), ' '.join(child.cmdline())))
      except psutil.Error:
        pass
  except psutil.Error:
    pass
  return found


def test_the_job_runs_on_warm_workers_and_starts_no_cold_ones(tmp_path):
  photos = [fixtures.photo(i, 30, 26) for i in range(40)]
  fixtures.write_tfrecord(str(tmp_path / 'in' / 'a.tfrecord'), [
      fixtures.example({'image': fixtures.bytes_feature(fixtures.encode_png(p))})
      for p in photos])
  process = subprocess.Popen(
      [sys.executable, '-m', 'beam_jobs.cli', 'export', '--input', str(tmp_path / 'in'),
       '--output', str(tmp_path / 'out'), '--quiet', '--direct_num_workers', '2'],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  seen = set()
  sampler = threading.Thread(target=lambda: [
      (seen.update(_cmdlines(process.pid)), time.sleep(0.02))
      for _ in iter(lambda: process.poll() is None, False)])
  sampler.start()
  _, stderr = process.communicate(timeout=300)
  sampler.join()
  assert process.returncode == 0, stderr[-3000:]
  assert len([n for n in os.listdir(tmp_path / 'out') if n.endswith('.png')]) == 40
  commands = [command for _, _, command in seen]
  serving = {pid: parent for pid, parent, c in seen if 'beam_jobs.worker --serve' in c}
  # One process imports, started by the launcher; two workers are forked from it.
  importer = [pid for pid, parent in serving.items() if parent == process.pid]
  assert len(importer) == 1, seen
  assert sorted(serving.values()).count(importer[0]) == 2, seen
  assert any('beam_jobs.worker --client' in c for c in commands), commands
  assert not any('-m apache_beam.runners.worker.sdk_worker_main' in c for c in commands)
  assert 'direct_running_mode should be' not in stderr


def test_more_workers_than_warm_processes_start_cold_and_finish():
  pool = worker.WarmPool(1)
  try:
    environment = environments.SubprocessSDKEnvironment.from_command_string(
        pool.worker_command())
    options = PipelineOptions(['--direct_num_workers=2'])
    with beam.Pipeline(runner=fn_runner.FnApiRunner(default_environment=environment),
                       options=options) as pipeline:
      squares = (pipeline | beam.Create(range(50)) | beam.Reshuffle()
                 | beam.Map(lambda x: x * x))
      assert_that(squares, equal_to([x * x for x in range(50)]))
  finally:
    pool.close()


def _forked_workers(pool, count):
  """The pool's importing process and its forked workers, once all have started."""
  deadline = time.time() + 120
  while time.time() < deadline:
    children = psutil.Process(pool.process.pid).children()
    if len(children) == count:
      return [pool.process.pid] + [c.pid for c in children]
    time.sleep(0.1)
  raise AssertionError(f'{count} warm workers did not start')


def test_warm_processes_exit_when_the_launcher_dies(tmp_path):
  script = ('import os, sys\n'
            'from beam_jobs import worker\n'
            'from tests.test_worker import _forked_workers\n'
            'pool = worker.WarmPool(2)\n'
            'print(" ".join(str(p) for p in _forked_workers(pool, 2)), flush=True)\n'
            'os._exit(0)\n')
  launcher = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            timeout=180, check=True, cwd=REPO)
  pids = [int(p) for p in launcher.stdout.split()]
  assert len(pids) == 3
  _assert_exit_soon(pids)


def test_closing_the_pool_stops_its_workers():
  pool = worker.WarmPool(2)
  pids = _forked_workers(pool, 2)
  pool.close()
  _assert_exit_soon(pids)


def _assert_exit_soon(pids):
  deadline = time.time() + 30
  while time.time() < deadline and any(_alive(p) for p in pids):
    time.sleep(0.2)
  assert not any(_alive(p) for p in pids)


def _alive(pid):
  try:
    return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
  except psutil.NoSuchProcess:
    return False


def _export_watching_processes(tmp_path, name, photos, *extra):
  """`unrecord export` of `photos` (raw uint8 tensors, one TF-written file), sampling the
  launcher's process tree; returns its stderr, the commands seen and the output root."""
  source = fixtures.write_tfrecord(str(tmp_path / name / 'in.tfrecord'), [
      fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(p))})
      for p in photos])
  out = tmp_path / name / 'out'
  process = subprocess.Popen(
      [sys.executable, '-m', 'beam_jobs.cli', 'export', '--input', source, '--output',
       str(out), *extra], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  seen = set()
  sampler = threading.Thread(target=lambda: [
      (seen.update(_cmdlines(process.pid)), time.sleep(0.02))
      for _ in iter(lambda: process.poll() is None, False)])
  sampler.start()
  _, stderr = process.communicate(timeout=300)
  sampler.join()
  assert process.returncode == 0, stderr[-3000:]
  assert os.path.exists(out / '_SUCCESS')
  rows = outputs.manifest_rows(out)
  assert sorted(r['index'] for r in rows) == list(range(len(photos)))
  for row in rows:
    written = cv2.imread(str(out / row['path']), cv2.IMREAD_COLOR)
    assert np.array_equal(cv2.cvtColor(written, cv2.COLOR_BGR2RGB), photos[row['index']])
  return stderr, [command for _, _, command in seen]


def test_a_small_input_runs_in_the_launcher_and_a_larger_one_on_warm_workers(tmp_path):
  # 6 photos, 1.2 MB of records: no worker process at all, the launch line says why.
  small = [fixtures.photo(i, 256, 256) for i in range(6)]
  stderr, commands = _export_watching_processes(tmp_path, 'small', small)
  assert '1 in_memory worker(s): input under 8 MB, --direct_num_workers N for more' \
      in stderr.splitlines()[0], stderr
  assert not any('beam_jobs.worker' in c or 'sdk_worker_main' in c for c in commands), \
      commands
  # 48 photos, 9.4 MB: one warm worker process per core, as before.
  large = [fixtures.photo(i, 256, 256) for i in range(48)]
  stderr, commands = _export_watching_processes(tmp_path, 'large', large)
  assert f'{os.cpu_count()} multi_processing worker(s))' in stderr.splitlines()[0], stderr
  assert any('beam_jobs.worker --serve' in c for c in commands), commands
  # Asked for, the small input gets its two workers.
  stderr, commands = _export_watching_processes(tmp_path, 'asked', small,
                                                '--direct_num_workers', '2')
  assert '2 multi_processing worker(s))' in stderr.splitlines()[0], stderr
  assert any('beam_jobs.worker --serve' in c for c in commands), commands


def _reshuffles(spread: bool, previous_manifest: bool) -> int:
  pipeline = beam.Pipeline()
  config = export_config.ExportConfig(patterns=('in.tfrecord',), output='out',
                                      previous_manifest=previous_manifest)
  _ = pipeline | ptransforms.ExportImages(config, spread=spread)
  found = []

  class Visitor(beam.pipeline.PipelineVisitor):
    def enter_composite_transform(self, node):
      if isinstance(node.transform, beam.Reshuffle):
        found.append(node.full_label)

  pipeline.visit(Visitor())
  return len(found)


def test_one_worker_in_the_launcher_gets_the_graph_without_reshuffles():
  """The small input above runs one worker in this process (its pixels and manifest are
  checked there): nothing to spread work over, so no Reshuffle, each five transforms of
  graph and translation; with workers, every step that fans out is spread."""
  assert _reshuffles(spread=False, previous_manifest=True) == 0
  assert _reshuffles(spread=True, previous_manifest=False) == 4
  assert _reshuffles(spread=True, previous_manifest=True) == 5
  one = PipelineOptions(['--runner', 'FnApiRunner', '--direct_num_workers', '1',
                         '--direct_running_mode', 'in_memory'])
  assert local_runner.one_worker_here(one, None)
  assert not local_runner.one_worker_here(one, fn_runner.FnApiRunner())
  assert not local_runner.one_worker_here(
      PipelineOptions(['--runner', 'FnApiRunner', '--direct_num_workers', '2']), None)
  assert not local_runner.one_worker_here(
      PipelineOptions(['--runner', 'PortableRunner', '--direct_num_workers', '1']), None)


def test_the_input_size_that_picks_the_workers_is_read_from_the_local_disk(tmp_path):
  folder = tmp_path / 'in'
  raw = b''.join(fixtures.photo(i, 256, 256).tobytes() for i in range(16))  # 3 MB
  fixtures.write_tfrecord(str(folder / 'a.tfrecord'), [raw])
  plain = os.path.getsize(folder / 'a.tfrecord')
  assert worker.local_input_bytes(['--input', str(folder)]) == plain
  assert worker.local_input_bytes([f'--input={folder}/*.tfrecord']) == plain
  assert worker.local_input_bytes(['--input', f'{folder},{folder}/a.tfrecord']) == 2 * plain
  assert worker.default_workers(['--input', str(folder)]) == 1
  # A gzipped file holds more records than its size: it counts 8 times, found by its
  # name, by its first bytes, or by --compression.
  gz = fixtures.write_tfrecord(str(tmp_path / 'z' / 'a.tfrecord.gz'), [raw], 'GZIP')
  assert worker.local_input_bytes(['--input', gz]) == 8 * os.path.getsize(gz)
  os.rename(gz, str(tmp_path / 'z' / 'b.tfrecord'))
  assert worker.local_input_bytes(['--input', str(tmp_path / 'z')]) == \
      8 * os.path.getsize(tmp_path / 'z' / 'b.tfrecord')
  assert worker.default_workers(['--input', str(tmp_path / 'z')]) == os.cpu_count()
  # A URL, or a pattern that matches nothing here: unknown, so one worker per core.
  for argv in (['--input', 's3://bucket/in'], ['--input', str(tmp_path / 'none*')], []):
    assert worker.local_input_bytes(argv) is None
    assert worker.default_workers(argv) == (os.cpu_count() or 1)
