"""`make bench`'s Flink rows: the export on the local cluster (deploy/flink/local_cluster.py),
with LOOPBACK workers and with an EXTERNAL worker pool, and where an 8-image run's
start-up goes.

The rates come from bench.run's interleaved rounds (DirectRunner in the same rounds).
The start-up split sets three clocks of this one machine against each other: the
bench's (process start and exit), the launcher's run log (when it called pipeline.run
and when that returned) with its report (first range started, last range done), and
Flink's REST API (when the job reached the cluster, when its first task ran, when it
ended). Consecutive marks, so the phases add up to the run's wall.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from typing import Dict, Iterator, List, Tuple

from bench import measure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    'local_cluster', os.path.join(ROOT, 'deploy', 'flink', 'local_cluster.py'))
cluster = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cluster)

PORTABLE = ('--runner', 'PortableRunner', '--job_endpoint', cluster.JOB_ENDPOINT,
            '--parallelism', str(cluster.SLOTS))
LOOPBACK = PORTABLE + ('--environment_type', 'LOOPBACK')

# The phases of a start-up, each from one mark to the next (see startup_split).
PHASES = (
    ('launcher', 'interpreter, imports, planning, the graph'),
    ('staging', 'pipeline.run: the job and its artifacts to the job server'),
    ('submission', "the job server's translation and submission to Flink"),
    ('scheduling', 'Flink: scheduling and deploying the first tasks'),
    ('harness', 'SDK harness start and the plan (listing, spreading the ranges)'),
    ('work', "the job's own work: first range started to last range done"),
    ('finish', 'merge, report: the later stages (EXTERNAL: their SDK workers), Flink ending'),
    ('exit', 'the launcher: final state, exit'),
)


class ClusterDown(Exception):
  """The local cluster is not up and could not be started."""


def ensure_cluster() -> bool:
  """Starts the local cluster when it is not up (True: this call started it)."""
  if cluster.ready():
    return False
  print('bench: the local Flink cluster is not up; starting it (deploy/flink/'
        'local_cluster.py up; the bench stops it again when it ends)', flush=True)
  code = subprocess.call([sys.executable, os.path.join(ROOT, 'deploy', 'flink',
                                                       'local_cluster.py'), 'up'])
  if code != 0 or not cluster.ready():
    raise ClusterDown(f'the local Flink cluster did not come up (local_cluster.py up exit '
                      f'{code}); run `make flink-up` and see {cluster.LOG_DIR}/')
  return True


def stop_cluster() -> None:
  cluster.down()


@contextlib.contextmanager
def worker_pool(log_path: str) -> Iterator[Tuple[str, ...]]:
  """Beam's SDK worker pool on 127.0.0.1 (as the Kubernetes sidecar runs it: it starts
  a worker per slot, with the first `python` on PATH, this venv's); yields the runner
  options that use it. Stopped by its pid, its workers with it."""
  import psutil  # pylint: disable=import-outside-toplevel
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep +
             os.environ.get('PATH', ''), PYTHONPATH=ROOT)
  with open(log_path, 'ab') as log:
    pool = subprocess.Popen(
        [sys.executable, '-m', 'apache_beam.runners.worker.worker_pool_main',
         f'--service_port={port}'], cwd=ROOT, env=env, stdout=log, stderr=log)
  try:
    deadline = time.time() + 60
    while not cluster._accepts(port):  # pylint: disable=protected-access
      if pool.poll() is not None or time.time() > deadline:
        raise ClusterDown(f'the worker pool did not start; see {log_path}')
      time.sleep(0.2)
    yield PORTABLE + ('--environment_type', 'EXTERNAL', '--environment_config',
                      f'localhost:{port}')
  finally:
    try:
      for child in psutil.Process(pool.pid).children(recursive=True):
        child.kill()
    except psutil.NoSuchProcess:
      pass
    pool.terminate()
    pool.wait(10)


def _log_time(line: str) -> float:
  """The epoch time of a run-log line ('2026-12-07 14:45:21,254 INFO ...')."""
  stamp, millis = line[:19], line[20:23]
  return time.mktime(time.strptime(stamp, '%Y-%m-%d %H:%M:%S')) + int(millis) / 1000


def _launcher_marks(output: str) -> Tuple[float, float, float]:
  """(launch, pipeline.run called, pipeline.run returned) from the run's log."""
  (path,) = glob.glob(os.path.join(output, '_logs', '*.log'))
  submitting = took = None
  with open(path, encoding='utf-8') as f:
    for line in f:
      if 'submitting the job to ' in line and submitting is None:
        submitting = line
      elif 'the runner took the job' in line and took is None:
        took = line
  if submitting is None or took is None:
    raise AssertionError(f'{path}: no submission lines')
  after = float(submitting.split(', ')[-1].split(' s after')[0])
  return _log_time(submitting) - after, _log_time(submitting), _log_time(took)


def _flink_marks(job_name: str) -> Tuple[float, float, float]:
  """(the job reached Flink, its first task ran, the job ended), from the REST API."""
  jobs = [j for j in cluster.rest('/jobs/overview', 10)['jobs'] if j['name'] == job_name]
  if len(jobs) != 1:
    raise AssertionError(f'Flink has {len(jobs)} jobs named {job_name}')
  jid = jobs[0]['jid']
  job = cluster.rest(f'/jobs/{jid}', 10)
  if job['state'] != 'FINISHED':
    raise AssertionError(f'Flink job {job_name} ended {job["state"]}')
  running = []
  for vertex in job['vertices']:
    times = cluster.rest(f'/jobs/{jid}/vertices/{vertex["id"]}/subtasktimes', 10)
    running += [s['timestamps']['RUNNING'] for s in times['subtasks']
                if s['timestamps'].get('RUNNING')]
  return job['start-time'] / 1000, min(running) / 1000, job['end-time'] / 1000


def startup_split(dataset, scratch: str, runner: Tuple[str, ...], runs: int,
                  name: str) -> Dict:
  """The fastest of `runs` exports of `dataset` (8 images) on the cluster, its wall split
  into PHASES by the marks of the three clocks."""
  best = None
  for _ in range(max(runs, 1)):
    job_name = f'unrecord-bench-{name}-{uuid.uuid4().hex[:8]}'
    output = os.path.join(scratch, f'startup_{name}')
    shutil.rmtree(output, ignore_errors=True)
    os.sync()
    command = [sys.executable, '-m', 'beam_jobs.cli', 'export', '--input', dataset.folder,
               '--output', output, '--format', 'png', '--quiet', *runner,
               '--job_name', job_name]
    spawned = time.time()
    measured = measure.run(command, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
                                             PYTHONPATH=ROOT), cwd=ROOT)
    ended = spawned + measured.wall_seconds
    with open(os.path.join(output, '_report.json')) as f:
      report = json.load(f)
    if report['written'] != dataset.count:
      raise AssertionError(f'{output}: {report["written"]} images, expected {dataset.count}')
    launched, submitting, took = _launcher_marks(output)
    reached, first_task, flink_end = _flink_marks(job_name)
    first_range = launched + report['work']['startup_seconds']
    last_range = first_range + report['work']['seconds']
    marks = [spawned, submitting, took, reached, first_task, first_range, last_range,
             flink_end, ended]
    phases = {key: round(b - a, 3) for (key, _), a, b in zip(PHASES, marks, marks[1:])}
    shutil.rmtree(output, ignore_errors=True)
    if best is None or measured.wall_seconds < best['wall_seconds']:
      best = {'wall_seconds': round(measured.wall_seconds, 3), 'images': dataset.count,
              'phases': phases}
  print(f"  tiny/{name:<17} {best['wall_seconds']:7.2f} s wall: " + ', '.join(
      f'{key} {seconds:.2f}' for key, seconds in best['phases'].items()), flush=True)
  return best


def markdown(splits: Dict[str, Dict]) -> List[str]:
  """The start-up split in docs/benchmarks.md's generated section: one line."""
  parts = [f"{name.upper()} {split['wall_seconds']:.2f} s = " + ' + '.join(
      f'{key} {split["phases"][key]:.2f}' for key, _ in PHASES)
           for name, split in splits.items()]
  return ['', 'Start-up of an 8-image export on the local Flink cluster, by the bench\'s, '
          "the launcher's and Flink's REST API's clocks (`bench/flink.py`): " +
          '; '.join(parts) + '.']


def main(argv=None) -> int:
  """The Flink block of `make bench` alone, on (a): its rows, figures and start-up split
  (the docs' Flink figures between full runs); results in OUT/flink.json."""
  import argparse  # pylint: disable=import-outside-toplevel
  from bench import data as data_lib  # pylint: disable=import-outside-toplevel
  from bench import run as run_lib  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
  parser.add_argument('--out', default=os.path.join(ROOT, 'bench', 'out', 'flink'))
  parser.add_argument('--count', type=int, default=4000)
  parser.add_argument('--repeat', type=int, default=2)
  args = parser.parse_args(argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  a = data_lib.build(os.path.join(args.out, 'data'), count=args.count, only='a')['a']
  tiny = data_lib.build(os.path.join(args.out, 'data', 'tiny'), count=8, only='a')['a']
  a_x5 = data_lib.replicated(a, os.path.join(args.out, 'links', 'a_x5'), 5)
  scratch = os.path.join('/dev/shm' if os.path.isdir('/dev/shm') else args.out,
                         'unrecord-bench-flink')
  bench = run_lib.Bench(args.out, False, run_lib.source_digests_a(a), args.repeat, scratch)
  started_cluster = ensure_cluster()
  try:
    os.makedirs(scratch, exist_ok=True)
    with worker_pool(os.path.join(args.out, 'worker_pool.log')) as external:
      run_lib.flink_rounds(bench, a, a_x5, tiny, external, args.repeat + 1)
  finally:
    if started_cluster:
      stop_cluster()
  shutil.rmtree(scratch, ignore_errors=True)
  figures = run_lib.flink_figures(bench)
  results = {'date': time.strftime('%Y-%m-%d'), 'repeat': args.repeat,
             'rows': [run_lib.dataclasses.asdict(r) for r in bench.rows], 'figures': figures}
  with open(os.path.join(args.out, 'flink.json'), 'w') as f:
    json.dump(results, f, indent=1)
  print('\n'.join(run_lib.flink_markdown(results['rows'], figures)))
  return 0


if __name__ == '__main__':
  sys.exit(main())
