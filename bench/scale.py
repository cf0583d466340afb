"""The scale case: 2,000, 10^5 and 10^6 small images, the manifest in JSONL and Parquet.

MNIST-sized 28x28 gray PNGs, the case where the manifest weighs most against the images.
The 60,000-image set of case (c) is linked 2 and 17 times (120,000 and 1,020,000 images;
the shards are symlinks, every image still decoded, encoded and written); a size under
one shard is the first records of its first shard. Each run is checked as a user would:
the manifest's rows equal the image files, and its Parquet parts read as one dataset in
pyarrow and DuckDB.

Reported per run: wall, images/s, the largest worker's peak RSS and its change from the
smallest size's, the manifest stage (from the last record range's end to the manifest's
commit, from `_report.json`) and its share of the wall, and the manifest's bytes per
image. The memory target (issue 24): every worker's peak at most 400 MB, and within 10%
of the smallest size's in the same format; the exit status is 1 when one is missed.

Then `--incremental`'s launch step at 10^5 shards on the S3 emulator
(bench.incremental_launch), and the report samples' merge memory from 10^2 to 10^4
manifest parts (bench.report_samples).

  python -m bench.scale [--sizes 2000,100000,1000000] [--formats jsonl,parquet]
      [--incremental_shards 100000] [--sample_parts 100,1000,10000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from typing import Dict, List

from bench import data as data_lib
from bench import incremental_launch
from bench import measure
from bench import report_samples

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, 'docs', 'benchmarks.md')
BEGIN, END = '<!-- scale:begin -->', '<!-- scale:end -->'


def _count_files(folder: str) -> int:
  count = 0
  for entry in os.scandir(folder):
    if entry.name.startswith('_'):
      continue
    count += _count_files(entry.path) if entry.is_dir() else 1
  return count


def _check(output: str, output_format: str) -> int:
  """Rows equal files; Parquet reads in pyarrow and DuckDB. Returns the rows."""
  parts = os.path.join(output, '_manifest')
  with open(os.path.join(parts, '_parts.json'), encoding='utf-8') as f:
    rows = json.load(f)['rows']
  files = _count_files(output)
  if rows != files:
    raise AssertionError(f'{output}: the manifest has {rows} rows for {files} files')
  if output_format == 'parquet':
    import duckdb  # pylint: disable=import-outside-toplevel
    import pyarrow.dataset as ds  # pylint: disable=import-outside-toplevel
    read = ds.dataset(parts).count_rows()
    (queried,), = duckdb.sql(
        f"SELECT count(DISTINCT path) FROM read_parquet('{parts}/*.parquet')").fetchall()
    if read != rows or queried != rows:
      raise AssertionError(f'{output}: pyarrow read {read}, DuckDB {queried}, of {rows}')
  else:
    with_lines = 0
    for name in sorted(os.listdir(parts)):
      if name.startswith('part-'):
        with open(os.path.join(parts, name), 'rb') as f:
          with_lines += sum(1 for _ in f)
    if with_lines != rows:
      raise AssertionError(f'{output}: {with_lines} JSON lines for {rows} rows')
  return rows


def _manifest_bytes(output: str) -> int:
  parts = os.path.join(output, '_manifest')
  return sum(os.path.getsize(os.path.join(parts, n)) for n in os.listdir(parts)
             if n.startswith('part-'))


def run_case(dataset: data_lib.Dataset, output_format: str, scratch: str) -> Dict:
  output = os.path.join(scratch, f'scale-{dataset.count}-{output_format}')
  shutil.rmtree(output, ignore_errors=True)
  # The same workers at every size, so their memory compares: left to itself, the job
  # runs an input under 8 MB (the 2,000-image runs) on one worker in the launcher.
  command = [sys.executable, '-m', 'beam_jobs.cli', 'export', '--input', dataset.folder,
             '--output', output, '--quiet', '--manifest_format', output_format,
             '--direct_num_workers', str(os.cpu_count() or 1)]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=ROOT)
  measured = measure.run(command, env=env, cwd=ROOT, timeout=3600)
  with open(os.path.join(output, '_report.json'), encoding='utf-8') as f:
    report = json.load(f)
  rows = _check(output, output_format)
  manifest_seconds = (report.get('manifest') or {}).get('seconds_after_work')
  row = {
      'images': dataset.count, 'format': output_format,
      'wall_seconds': round(measured.wall_seconds, 2),
      'images_per_second': round(dataset.count / measured.wall_seconds),
      'worker_peak_mb': round(measured.worker_peak / 2**20),
      'launcher_peak_mb': round(measured.launcher_peak / 2**20),
      'manifest_seconds': manifest_seconds,
      'manifest_share': (round(manifest_seconds / measured.wall_seconds, 3)
                         if manifest_seconds is not None else None),
      'manifest_parts': report['manifest']['parts'],
      'manifest_bytes_per_image': round(_manifest_bytes(output) / rows, 1),
      'rows': rows,
  }
  shutil.rmtree(output, ignore_errors=True)
  print(f'  {dataset.count:>9,} {output_format:<7} {row["wall_seconds"]:7.1f} s, '
        f'{row["images_per_second"]:6,} img/s, worker peak {row["worker_peak_mb"]} MB, '
        f'manifest {manifest_seconds} s ({row["manifest_share"]}) in '
        f'{row["manifest_parts"]} parts, {row["manifest_bytes_per_image"]} B/image',
        flush=True)
  return row


def with_changes(rows: List[Dict]) -> List[Dict]:
  """Each row with `peak_change`: its worker peak against the smallest run's of its
  manifest format."""
  smallest = {}
  for r in sorted(rows, key=lambda r: r['images']):
    smallest.setdefault(r['format'], r)
  return [dict(r, peak_change=round(
      r['worker_peak_mb'] / max(smallest[r['format']]['worker_peak_mb'], 1) - 1, 3))
          for r in rows]


def targets(rows: List[Dict]) -> List[Dict]:
  """The memory target, per run: a worker's peak <= 400 MB, and within 10% of the
  smallest run's of the same format."""
  found = []
  for r in rows:
    name = f'{r["images"]:,} images, {r["format"]}'
    found.append({'name': f'peak RSS per worker, {name} (MB)', 'value': r['worker_peak_mb'],
                  'op': '<=', 'goal': 400, 'met': r['worker_peak_mb'] <= 400})
    found.append({'name': f'RSS change from the smallest run, {name}',
                  'value': abs(r['peak_change']), 'op': '<=', 'goal': 0.10,
                  'met': abs(r['peak_change']) <= 0.10})
  return found


def markdown(rows: List[Dict]) -> str:
  lines = [BEGIN, '', '| images | manifest | wall s | images/s | worker peak MB | '
           'peak vs smallest | manifest stage s | share of wall | parts | '
           'manifest B/image |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["images"]:,} | {r["format"]} | {r["wall_seconds"]} | '
                 f'{r["images_per_second"]:,} | {r["worker_peak_mb"]} | '
                 f'{r["peak_change"]:+.1%} | '
                 f'{r["manifest_seconds"]} | {r["manifest_share"]} | '
                 f'{r["manifest_parts"]} | {r["manifest_bytes_per_image"]} |')
  lines += ['', END]
  return '\n'.join(lines)


def update_docs(rows: List[Dict]) -> None:
  with open(DOCS, encoding='utf-8') as f:
    text = f.read()
  table = markdown(rows)
  if BEGIN in text and END in text:
    text = text[:text.index(BEGIN)] + table + text[text.index(END) + len(END):]
  else:
    text += '\n## Scale: 2,000, 10^5 and 10^6 images (`python -m bench.scale`)\n\n' + table + '\n'
  with open(DOCS, 'w', encoding='utf-8') as f:
    f.write(text)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m bench.scale', description=__doc__)
  parser.add_argument('--data', default=os.path.join(ROOT, 'bench', 'data'))
  parser.add_argument('--scratch', default='/dev/shm' if os.path.isdir('/dev/shm')
                      else '/tmp')
  parser.add_argument('--sizes', default='2000,100000,1000000')
  parser.add_argument('--formats', default='jsonl,parquet')
  parser.add_argument('--no_docs', action='store_true')
  parser.add_argument('--incremental_shards', type=int, default=100_000,
                      help='S3-emulator shards for the --incremental launch step (0: none)')
  parser.add_argument('--sample_parts', default='100,1000,10000',
                      help="manifest parts for the report samples' merge memory")
  args = parser.parse_args(argv)
  gray = data_lib.build(args.data, count=4000, gray_count=60000)['c']
  links = os.path.join(args.scratch, 'unrecord-scale-links')
  rows = []
  print('bench: scale (28x28 gray -> PNG)', flush=True)
  for size in (int(s) for s in args.sizes.split(',')):
    dataset = _sized(gray, links, size)
    for output_format in args.formats.split(','):
      rows.append(run_case(dataset, output_format, args.scratch))
  rows = with_changes(rows)
  found = targets(rows)
  print(json.dumps(rows))
  launch_met = True
  if args.incremental_shards:
    launch_met = incremental_launch.main(['--shards', str(args.incremental_shards)]) == 0
  samples_met = report_samples.main(['--parts', args.sample_parts]) == 0
  print('bench: scale targets')
  for t in found:
    print(f"  {'met ' if t['met'] else 'MISS'} {t['name']:<58} {t['value']:8.2f} "
          f"(goal {t['op']} {t['goal']})")
  if not args.no_docs:
    update_docs(rows)
  return 0 if all(t['met'] for t in found) and launch_met and samples_met else 1


def _sized(gray: data_lib.Dataset, links: str, size: int) -> data_lib.Dataset:
  """`size` images of the gray set: the first records of its first shard, or the whole
  set linked as many times as `size` needs."""
  if size >= gray.count:
    copies = math.ceil(size / gray.count)
    return data_lib.replicated(gray, os.path.join(links, f'x{copies}'), copies)
  one = data_lib.subset(gray, os.path.join(links, 'one-shard'), 1)
  if size > one.count:
    raise SystemExit(f'bench.scale: a size under {gray.count:,} must fit in one shard '
                     f'({one.count:,} images)')
  return data_lib.head(one, os.path.join(links, f'head-{size}'), size)


if __name__ == '__main__':
  sys.exit(main())
