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
import shutil
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
from transforms import tfrecord

SHARDS = 3
PER_SHARD = 6
BIG = 400  # 64x64 photos, about 4.9 MB: five ranges at --split_size_mb 1
BEAM_JARS = os.path.expanduser('~/.apache_beam/cache/jars')
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
      ('flink', flink_cluster.FLINK_RUNNER + ['--job_name', 'unrecord-test-main']),
      ('direct', []),
      ('embedded', ['--runner', 'PortableRunner', '--job_endpoint', 'embed',
                    '--environment_type', 'LOOPBACK'])):
    out = str(root / name)
    results[name] = (out, run_unrecord(*_args(folder, out, *runner)))
  assert _jars() == jars_before, 'Beam downloaded a jar'
  return results


def _listing(out):
  names = set()
  for parent, _, files in os.walk(out):
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
  job = flink_cluster.job_named('unrecord-test-main')
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
