"""The local Flink cluster that `make flink-up` starts (deploy/flink/local_cluster.py), as
the tests see it: where it answers, the arguments that submit to it, its REST API.

A test that needs the cluster and finds none fails (never skips), saying how to start it.
"""

from __future__ import annotations

import importlib.util
import os
import time
import uuid
from typing import Dict, List, Sequence

import pytest

from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location(
    'local_cluster', os.path.join(REPO, 'deploy', 'flink', 'local_cluster.py'))
cluster = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cluster)

JAR = cluster.JAR
JOB_ENDPOINT = cluster.JOB_ENDPOINT
FLINK_MASTER = cluster.FLINK_MASTER
SLOTS = cluster.SLOTS

# The two ways to submit; neither lets Beam download a job-server jar.
PORTABLE = ['--runner', 'PortableRunner', '--job_endpoint', JOB_ENDPOINT,
            '--environment_type', 'LOOPBACK', '--parallelism', str(SLOTS)]
FLINK_RUNNER = ['--runner', 'FlinkRunner', '--flink_master', FLINK_MASTER,
                '--flink_job_server_jar', JAR, '--environment_type', 'LOOPBACK',
                '--parallelism', str(SLOTS)]


def require() -> None:
  """Fails the test unless the cluster and its job server answer."""
  if not cluster.ready():
    pytest.fail(f'no local Flink cluster: REST {cluster.REST_URL} with {SLOTS} slots and '
                f'the job server on {JOB_ENDPOINT} must answer; run `make flink-up` '
                '(and `make flink-down` after)', pytrace=False)


def rest(path: str):
  return cluster.rest(path, timeout=10)


def unique_job_name(prefix: str) -> str:
  """The cluster outlives a test run: every job gets a name no earlier run used."""
  return f'{prefix}-{uuid.uuid4().hex[:8]}'


def job_named(name: str) -> Dict:
  """The Flink job whose name is `name` (Beam passes --job_name through)."""
  jobs = [j for j in rest('/jobs/overview')['jobs'] if j['name'] == name]
  assert len(jobs) == 1, (name, [j['name'] for j in rest('/jobs/overview')['jobs']])
  return rest(f'/jobs/{jobs[0]["jid"]}')


def records_per_subtask(job: Dict, name_part: str) -> List[int]:
  """Records each parallel subtask of the vertex named with `name_part` read."""
  (vertex,) = [v for v in job['vertices'] if name_part in v['name']]
  detail = rest(f'/jobs/{job["jid"]}/vertices/{vertex["id"]}')
  return [s['metrics']['read-records'] for s in detail['subtasks']]


def taskmanager_ids() -> List[str]:
  """The TaskManagers the cluster's ResourceManager has registered, by id."""
  return [tm['id'] for tm in cluster.rest('/taskmanagers').get('taskmanagers', [])]


def wait_for_slots(gone: Sequence[str] = (), timeout: float = 180.0) -> None:
  """After a TaskManager restart: until its slots are registered again and none of the
  TaskManagers `gone` is. A killed TaskManager stays registered, with its slots, until
  its heartbeat times out (heartbeat.timeout, 20 s here): counting slots alone would
  hand the next test a cluster whose slots are dead."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    try:
      registered = taskmanager_ids()
    except (OSError, ValueError):
      registered = list(gone)
    if cluster.ready() and not set(registered) & set(gone):
      return
    time.sleep(0.5)
  raise AssertionError('the TaskManager did not come back')
