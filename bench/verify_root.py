"""`unrecord verify` on a root of many small files, one root per --checksum.

    python -m bench.verify_root --files 100000 [--data DIR] [--scratch DIR] [--repeat N]

Exports `files` 28x28 gray crops (dataset (c)'s kind, TensorFlow-written) with each
--checksum, then times `unrecord verify ROOT --quiet --json` on each root as its own
process (bench.measure: wall, peak RSS) and checks it found the root whole. `make bench`
runs the same through `measure_verify` on dataset (c), linked up to 10^5 files or more;
the last stdout line here is the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from typing import List, Sequence

from bench import data as data_lib
from bench import measure

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKSUMS = ('sha256', 'crc32c', 'blake3')


def gray_dataset(folder: str, count: int) -> data_lib.Dataset:
  """`count` 28x28 gray crops in 4 shards under `folder` (reused when already there)."""
  dataset = data_lib.Dataset(f'gray{count}', 'gray_u8', folder, count, 4)
  stamp = os.path.join(folder, '_dataset.json')
  if os.path.exists(stamp):
    with open(stamp) as f:
      if json.load(f) == {'count': count}:
        return dataset
  shutil.rmtree(folder, ignore_errors=True)
  data_lib._write_sharded(folder, 4, data_lib._raw_payloads(  # pylint: disable=protected-access
      count, data_lib.GRAY_SIZE, gray=True, seed=1), count)
  with open(stamp, 'w') as f:
    json.dump({'count': count}, f)
  return dataset


def measure_verify(dataset: data_lib.Dataset, scratch: str, repeat: int = 1,
                   checksums: Sequence[str] = CHECKSUMS) -> List[dict]:
  """For each checksum: the dataset exported with it, then `unrecord verify` timed
  `repeat` times (the fastest kept). One dict a checksum."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=ROOT)
  rows = []
  for checksum in checksums:
    root = os.path.join(scratch, f'verify-{checksum}')
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run([sys.executable, '-m', 'beam_jobs.cli', 'export', '--input',
                    dataset.folder, '--output', root, '--format', 'png', '--quiet',
                    '--checksum', checksum], check=True, capture_output=True, text=True,
                   cwd=ROOT, env=env)
    os.sync()
    runs = []
    for _ in range(max(repeat, 1)):
      measured = measure.run([sys.executable, '-m', 'beam_jobs.cli', 'verify', root,
                              '--quiet', '--json'], env=env, cwd=ROOT)
      summary = measured.result or {}
      if not summary.get('whole') or summary.get('files_checked') != dataset.count:
        raise AssertionError(f'verify of {root}: {json.dumps(summary)[:2000]}')
      runs.append(measured)
    best = min(runs, key=lambda m: m.wall_seconds)
    rows.append({'checksum': checksum, 'files': dataset.count,
                 'wall_seconds': best.wall_seconds,
                 'files_per_second': dataset.count / best.wall_seconds,
                 'verify_seconds': best.result['seconds'],
                 'tree_peak_mb': max(m.tree_peak_rss for m in runs) / 2**20,
                 'launcher_peak_mb': max(m.launcher_peak for m in runs) / 2**20})
    shutil.rmtree(root, ignore_errors=True)
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--files', type=int, default=100_000)
  parser.add_argument('--data', default=os.path.join(ROOT, 'bench', 'data'))
  parser.add_argument('--scratch', default='/dev/shm' if os.path.isdir('/dev/shm')
                      else os.path.join(ROOT, 'bench', 'out'))
  parser.add_argument('--repeat', type=int, default=1)
  parser.add_argument('--checksum', action='append', choices=CHECKSUMS)
  args = parser.parse_args(argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  dataset = gray_dataset(os.path.join(args.data, f'verify_gray{args.files}'), args.files)
  scratch = os.path.join(args.scratch, f'unrecord-verify-bench-{os.getpid()}')
  os.makedirs(scratch, exist_ok=True)
  try:
    rows = measure_verify(dataset, scratch, args.repeat, args.checksum or CHECKSUMS)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  for row in rows:
    print(f"  verify {row['checksum']:<7} {row['files']:,} files: "
          f"{row['wall_seconds']:6.2f} s wall ({row['verify_seconds']:.2f} s checking), "
          f"{row['files_per_second']:8,.0f} files/s, peak {row['tree_peak_mb']:.0f} MB",
          flush=True)
  print(json.dumps(rows))
  return 0


if __name__ == '__main__':
  sys.exit(main())
