"""Where each second of a small local export goes, timed from outside (issue 40).

    python -m bench.fixed_costs --input DIR [--python PY ...] [--runs N]

Runs `python -m beam_jobs.cli export --input DIR --output ...` the way a user does (a
whole process, no --quiet, so it prints its launch and closing lines), beside `python
-c 'import apache_beam'` in the same interleaved rounds, for each interpreter given
(e.g. `make test`'s .venv and `make demo`'s lean one). Each run's wall is split into
consecutive phases by marks of three clocks on this one machine: the bench's (spawn,
each stderr line as it arrives, exit), the run log's (the launch, pipeline.run called
and returned, the workers' own timestamps) and `_report.json`'s `work` (first range
started, last range done). The phases add up to the wall. Beside them, when the warm
pool's importer forked its workers (seen by polling the process tree): the pool was
warm then. The fastest run of each interpreter is kept.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Sequence

from bench import flink as flink_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The phases of a run, each from one mark to the next (see split).
PHASES = (
    ('imports', 'interpreter start and the launcher\'s imports, to the launch'),
    ('planning', 'options, the root\'s claim, sampling and planning, to the launch line'),
    ('graph', 'the pipeline graph, to pipeline.run'),
    ('workers', "the runner's servers and the workers' start, to the first worker's "
     'harness'),
    ('grpc', "the harness's channels and the first bundle, to the first range"),
    ('work', 'first range started to last range done'),
    ('closing', 'manifest merge, report, _SUCCESS, to pipeline.run returning'),
    ('report', 'the closing line: report read, log copied'),
    ('exit', 'the closing line to the process\'s exit'),
)
_WORKER_STAMP = re.compile(r'timestamp \{\s+seconds: (\d+)\s+nanos: (\d+) \} message: '
                           r'"Logging handler created."')


def _pool_forked(pid: int, seen: Dict[str, float], stop: threading.Event) -> None:
  """Polls the launcher's tree: when its warm-pool importer (`worker --serve`) first
  has a child, the pool is warm (it forks once its imports are done)."""
  import psutil  # pylint: disable=import-outside-toplevel
  try:
    launcher = psutil.Process(pid)
  except psutil.NoSuchProcess:
    return
  while not stop.is_set():
    try:
      for child in launcher.children():
        if '--serve' in child.cmdline() and child.children():
          seen['pool_warm'] = time.time()
          return
    except psutil.Error:
      pass
    time.sleep(0.02)


def run_once(python: str, input_dir: str, output: str, extra: Sequence[str] = ()) -> dict:
  """One export, its wall split into PHASES; raises if it failed or wrote no image."""
  shutil.rmtree(output, ignore_errors=True)
  os.sync()
  command = [python, '-m', 'beam_jobs.cli', 'export', '--input', input_dir, '--output',
             output, '--format', 'png', '--progress_interval', '3600', *extra]
  env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2')
  spawned = time.time()
  process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, cwd=ROOT, env=env)
  seen: Dict[str, float] = {}
  stop = threading.Event()
  poller = threading.Thread(target=_pool_forked, args=(process.pid, seen, stop),
                            daemon=True)
  poller.start()
  lines = []
  for line in process.stderr:
    lines.append((time.time(), line))
  code = process.wait()
  ended = time.time()
  stop.set()
  poller.join()
  text = ''.join(line for _, line in lines)
  if code != 0:
    raise RuntimeError(f'{" ".join(command)} exited {code}:\n{text[-2000:]}')
  launch_line = next(t for t, line in lines if 'file(s) of' in line)
  closing_line = next(t for t, line in lines if ': written ' in line)
  with open(os.path.join(output, '_report.json')) as f:
    report = json.load(f)
  launched, submitting, took = flink_lib._launcher_marks(output)  # pylint: disable=protected-access
  (log,) = glob.glob(os.path.join(output, '_logs', '*.log'))
  with open(log, encoding='utf-8') as f:
    harness = [int(s) + int(n) / 1e9 for s, n in _WORKER_STAMP.findall(f.read())]
  first_range = launched + report['work']['startup_seconds']
  last_range = first_range + report['work']['seconds']
  # In the launcher's own worker (a small input) no harness starts: its phase is 0.
  harness_up = min(harness) if harness else submitting
  marks = [spawned, launched, launch_line, submitting, harness_up, first_range,
           last_range, took, closing_line, ended]
  phases = {key: round(b - a, 3) for (key, _), a, b in zip(PHASES, marks, marks[1:])}
  result = {'wall_seconds': round(ended - spawned, 3), 'images': report['written'],
            'phases': phases,
            'pool_warm_seconds': (round(seen['pool_warm'] - spawned, 3)
                                  if 'pool_warm' in seen else None),
            'pipeline_run_seconds': round(submitting - spawned, 3)}
  shutil.rmtree(output, ignore_errors=True)
  return result


def import_beam_seconds(python: str) -> float:
  started = time.perf_counter()
  subprocess.run([python, '-c', 'import apache_beam'], check=True, cwd=ROOT,
                 env=dict(os.environ, PYTHONPATH=ROOT))
  return time.perf_counter() - started


def measure(pythons: Sequence[str], input_dir: str, runs: int,
            scratch: Optional[str] = None, extra: Sequence[str] = ()) -> Dict[str, dict]:
  """For each interpreter: its fastest export's split and its fastest `import
  apache_beam`, from `runs` interleaved rounds."""
  scratch = scratch or tempfile.mkdtemp(prefix='fixed-costs-')
  best: Dict[str, dict] = {}
  imports: Dict[str, float] = {}
  for _ in range(max(runs, 1)):
    for python in pythons:
      imports[python] = min(imports.get(python, float('inf')), import_beam_seconds(python))
      split = run_once(python, input_dir, os.path.join(scratch, 'out'), extra)
      if python not in best or split['wall_seconds'] < best[python]['wall_seconds']:
        best[python] = split
  for python in pythons:
    best[python]['import_beam_seconds'] = round(imports[python], 3)
  return best


def table(results: Dict[str, dict]) -> List[str]:
  """A markdown table: a column per interpreter, a row per phase."""
  names = list(results)
  lines = ['| phase | ' + ' | '.join(names) + ' |',
           '|---|' + '---:|' * len(names)]
  for key, _ in PHASES:
    lines.append(f'| {key} | ' + ' | '.join(f"{results[n]['phases'][key]:.2f}"
                                            for n in names) + ' |')
  lines.append('| **wall** | ' + ' | '.join(f"**{results[n]['wall_seconds']:.2f}**"
                                            for n in names) + ' |')
  lines.append('| pool warm at | ' + ' | '.join(
      '-' if results[n]['pool_warm_seconds'] is None else
      f"{results[n]['pool_warm_seconds']:.2f}" for n in names) + ' |')
  lines.append('| pipeline.run at | ' + ' | '.join(
      f"{results[n]['pipeline_run_seconds']:.2f}" for n in names) + ' |')
  lines.append('| `import apache_beam` | ' + ' | '.join(
      f"{results[n]['import_beam_seconds']:.2f}" for n in names) + ' |')
  lines.append('| wall / import | ' + ' | '.join(
      f"{results[n]['wall_seconds'] / results[n]['import_beam_seconds']:.2f}x"
      for n in names) + ' |')
  return lines


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--input', required=True, help='a folder of TFRecords to export')
  parser.add_argument('--python', action='append',
                      help='an interpreter to run the job with (repeatable; default: this '
                      'one)')
  parser.add_argument('--runs', type=int, default=3, help='interleaved rounds, the '
                      'fastest kept (default: 3)')
  parser.add_argument('--scratch', help='where the runs write (default: a temp folder)')
  parser.add_argument('--json', action='store_true', help='print the results as JSON too')
  args, extra = parser.parse_known_args(argv)
  pythons = args.python or [sys.executable]
  results = measure(pythons, os.path.abspath(args.input), args.runs, args.scratch, extra)
  print('\n'.join(table(results)))
  if args.json:
    print(json.dumps(results))
  return 0


if __name__ == '__main__':
  sys.exit(main())
