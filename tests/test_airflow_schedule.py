"""The nightly DAG (deploy/schedule/airflow_dag.py) run by Airflow itself, `airflow dags test`,
with the local runner over TensorFlow-written shards: what the scheduler sees is what the
export did."""

import json
import os
import sqlite3
import subprocess
import sys

from tests import fixtures
from tests import outputs
from tests.conftest import REPO

AIRFLOW = os.path.join(os.path.dirname(sys.executable), 'airflow')


def _shard(path, first):
  fixtures.write_tfrecord(str(path), [fixtures.example({
      'image': fixtures.bytes_feature(fixtures.serialized_tensor(fixtures.photo(first + i, 20, 20))),
  }) for i in range(4)])


def _airflow(env, *args):
  return subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True,
                        timeout=300, cwd=env['AIRFLOW_HOME'])


def _task_states(home):
  with sqlite3.connect(os.path.join(home, 'airflow.db')) as db:
    (run_id,) = db.execute('SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC '
                           'LIMIT 1', ('unrecord_nightly',)).fetchone()
    return dict(db.execute('SELECT task_id, state FROM task_instance WHERE dag_id = ? AND '
                           'run_id = ?', ('unrecord_nightly', run_id)).fetchall())


def test_the_nightly_dag_exports_then_does_nothing_then_fails_on_a_corrupt_shard(tmp_path):
  src, out, home = tmp_path / 'src', tmp_path / 'out', tmp_path / 'airflow'
  src.mkdir()
  home.mkdir()
  _shard(src / 'night-00000.tfrecord', 0)
  _shard(src / 'night-00001.tfrecord', 4)
  env = dict(os.environ, AIRFLOW_HOME=str(home),
             AIRFLOW__CORE__DAGS_FOLDER=os.path.join(REPO, 'deploy', 'schedule'),
             AIRFLOW__CORE__LOAD_EXAMPLES='False', UNRECORD_RUNNER='local',
             UNRECORD_INPUT=str(src / '*.tfrecord'), UNRECORD_OUTPUT=str(out),
             UNRECORD_MAX_FAILURES='0')
  migrated = _airflow(env, 'db', 'migrate')
  assert migrated.returncode == 0, migrated.stderr[-3000:]

  first = _airflow(env, 'dags', 'test', 'unrecord_nightly', '2026-12-01')
  assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
  assert _task_states(str(home)) == {'export_images': 'success',
                                     'wait_for_success': 'success'}
  rows = outputs.manifest_rows(out)
  assert len(rows) == 8 and (out / '_SUCCESS').exists()
  images = {r['path']: os.stat(out / r['path']).st_mtime_ns for r in rows}

  second = _airflow(env, 'dags', 'test', 'unrecord_nightly', '2026-12-02')
  assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
  assert _task_states(str(home)) == {'export_images': 'success',
                                     'wait_for_success': 'success'}
  report = json.load(open(out / '_report.json'))
  assert report['written'] == 0 and report['incremental']['shards_processed'] == 0
  assert {p: os.stat(out / p).st_mtime_ns for p in images} == images  # nothing rewritten

  damaged = bytearray((src / 'night-00000.tfrecord').read_bytes())
  damaged[30] ^= 0xFF
  (src / 'night-00002.tfrecord').write_bytes(bytes(damaged))
  third = _airflow(env, 'dags', 'test', 'unrecord_nightly', '2026-12-03')
  assert third.returncode != 0
  states = _task_states(str(home))
  assert states['export_images'] == 'failed', states
  assert states['wait_for_success'] in ('upstream_failed', 'failed'), states
  assert not (out / '_SUCCESS').exists()
  assert json.load(open(out / '_report.json'))['success'] is False
