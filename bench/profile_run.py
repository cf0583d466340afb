"""Where a real run's time goes: the job as a user runs it, sampled by py-spy.

    python -m bench.profile_run --input 'bench/data/a_float32/train*' [-- export options]

Runs `unrecord export` under `py-spy record --subprocesses` (every process of the run:
the launcher, the warm workers; sampled in place, nothing paused) and sorts each sample
into the stage its stack is in, the first of STAGES that matches. Prints a Markdown table:
each stage's share of all samples, and its CPU time per image (samples / rate / images).
Run it on a quiet machine; py-spy itself takes a few percent of one core.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Sequence, Tuple

# (stage, process, frames that mark it), matched in this order against each sample's
# stack; a frame is matched by its function name and file, e.g. 'encode (transforms/pixels/encode'.
# A generator's frames show under whichever frame resumed it, so reading is marked by the
# framing module's frames as well as by read_slots; planning, which walks the same
# frames, is matched before it.
STAGES: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = (
    ('worker: imports before the first range', 'worker', ('<frozen importlib',)),
    ('worker: planning ranges (frame index pass)', 'worker',
     ('plan_file (transforms/inputs/record_ranges.py',)),
    ('encode (fpng, OpenCV)', 'worker', ('encode (transforms/pixels/encode.py',)),
    ('sha256 of each file, for the manifest', 'worker',
     ('sha256 (transforms/output/root_files.py',)),
    ('file write: temp file, write, rename', 'worker', ('write (transforms/output/root_files.py',)),
    ('read records: page cache copy, CRC32C', 'worker',
     ('read_slots (transforms/inputs/record_ranges.py',
      'read_range (transforms/inputs/record_ranges.py', 'transforms/inputs/tfrecord.py')),
    ('float -> 8-bit: range check, two conversions', 'worker',
     ('normalize (transforms/pixels/normalize.py',)),
    ('decode: layout check, aligned tensor copy', 'worker',
     ('decode_records (transforms/images/layout_decoder.py',)),
    ('naming', 'worker', ('name (transforms/output/naming.py',)),
    ('manifest rows and runs', 'worker', ('_add_rows (transforms/export.py',)),
    ('rest of the export DoFn', 'worker', ('export_range (transforms/export.py',)),
    ('manifest parts, report, dead letters', 'worker', ('transforms/',)),
    ('worker: Beam harness (gRPC, bundles)', 'worker', ('',)),
    ('launcher: imports', 'launcher', ('<frozen importlib',)),
    ('launcher: sampling the schema, planning', 'launcher', ('plan_export (transforms/plan.py',)),
    ('launcher: the runner (FnApiRunner, gRPC)', 'launcher', ('',)),
)


def classify(stack: Sequence[str], process: str) -> str:
  for stage, where, markers in STAGES:
    if where == process and any(marker in frame for marker in markers for frame in stack):
      return stage
  return 'other'


def read_samples(path: str) -> Dict[str, int]:
  """Samples per stage from py-spy's raw (collapsed-stack) output."""
  stages: Dict[str, int] = collections.Counter()
  with open(path) as f:
    for line in f:
      stack, _, count = line.rstrip('\n').rpartition(' ')
      frames = stack.split(';')
      processes = [frame for frame in frames if frame.startswith('process ')]
      process = 'worker' if any('beam_jobs.worker' in p for p in processes) else 'launcher'
      stages[classify([f for f in frames if not f.startswith('process ')], process)] += int(
          count)
  return stages


def table(stages: Dict[str, int], rate: int, images: int, wall: float) -> List[str]:
  total = sum(stages.values())
  lines = [f'{images:,} images in {wall:.1f} s; {total:,} samples at {rate} Hz over every '
           'process of the run', '',
           '| stage | share of samples | CPU us per image |', '|---|---:|---:|']
  order = [stage for stage, _, _ in STAGES] + ['other']
  for stage in order:
    if stages.get(stage):
      lines.append(f'| {stage} | {stages[stage] / total:.1%} | '
                   f'{stages[stage] / rate / images * 1e6:,.0f} |')
  return lines


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--input', required=True, help='input files (a glob)')
  parser.add_argument('--output', default='/dev/shm/unrecord-profile-run')
  parser.add_argument('--rate', type=int, default=50, help='samples per second per process')
  parser.add_argument('--samples', help="keep py-spy's raw samples (collapsed stacks) here")
  args, export_argv = parser.parse_known_args(argv)
  py_spy = shutil.which('py-spy', path=os.path.dirname(sys.executable)) or shutil.which(
      'py-spy')
  if not py_spy:
    parser.error('py-spy is not installed (it comes with the project\'s test extra)')
  shutil.rmtree(args.output, ignore_errors=True)
  with tempfile.TemporaryDirectory() as folder:
    raw = os.path.join(folder, 'samples.txt')
    command = [py_spy, 'record', '--subprocesses', '--nonblocking', '--rate', str(args.rate),
               '--format', 'raw', '--output', raw, '--', sys.executable, '-m',
               'beam_jobs.cli', 'export', '--input', args.input, '--output', args.output,
               '--quiet', *[a for a in export_argv if a != '--']]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stages = read_samples(raw)
    if args.samples:
      shutil.copy(raw, args.samples)
  import json
  with open(os.path.join(args.output, '_report.json')) as f:
    report = json.load(f)
  shutil.rmtree(args.output, ignore_errors=True)
  print('\n'.join(table(stages, args.rate, report['written'], report['seconds'])))
  return 0


if __name__ == '__main__':
  sys.exit(main())
