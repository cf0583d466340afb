"""What one manifest row costs, on one core: the worker's entry, and the part's merge.

  python -m bench.manifest_rows [--rows 250000]

Rows are those of a 28x28 gray PNG export (the case where the manifest weighs most
against the images), with realistic paths and sources. Figures: microseconds per row,
least of 3 rounds, for (1) the worker side, `EntryWriter.add` (with the JSON line, for
JSONL) and its share of the run flush (sort and Arrow IPC write); (2) `write_part` of one part
holding every row, in JSONL and in Parquet; and the bytes per row of each format.
docs/scale.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

from transforms.output import export_config
from transforms.output import manifest
from transforms.output import root_files


def _row(i: int) -> dict:
  shard = i // 15000
  return {'bytes': 280 + i % 60, 'dtype_in': 'uint8', 'dtype_out': 'uint8',
          'encoder': 'fpng', 'format': 'png', 'id': None, 'index': i % 15000,
          'key': 'image', 'label': i % 10, 'label_name': None, 'n': 0,
          'normalization': [], 'offset': (i % 15000) * 810, 'passthrough': False,
          'path': f'copy{shard // 4:02d}.tfrecord-{shard % 4:05d}-{i % 15000:06d}.png',
          'sha256': f'{i:064x}', 'shape_in': [28, 28, 1], 'shape_out': [28, 28, 1],
          'source': f'/data/c_gray28/copy{shard // 4:02d}.tfrecord-{shard % 4:05d}',
          'value_range': [0, 255]}


def _least(function, rounds: int = 3) -> float:
  times = []
  for _ in range(rounds):
    started = time.perf_counter()
    function()
    times.append(time.perf_counter() - started)
  return min(times)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m bench.manifest_rows', description=__doc__)
  parser.add_argument('--rows', type=int, default=250_000)
  args = parser.parse_args(argv)
  rows = [_row(i) for i in range(args.rows)]
  results = {'rows': args.rows}
  with tempfile.TemporaryDirectory(dir='/dev/shm' if os.path.isdir('/dev/shm') else None
                                   ) as folder:
    root = root_files.OutputRoot(folder)
    results['line_us_per_row'] = round(_least(lambda: [
        manifest.manifest_line(row, in_key_order=True) for row in rows]) / args.rows * 1e6, 2)
    for output_format in export_config.MANIFEST_FORMATS:
      config = export_config.ExportConfig(patterns=('x',), output=folder,
                                          manifest_format=output_format)
      made = [manifest._with_text_fields(dict(row)) if output_format == 'parquet' else row  # pylint: disable=protected-access
              for row in rows]
      written = []

      def entries():
        writer = manifest.EntryWriter(root, output_format)
        for row in made:  # as export._add_rows adds them; JSONL makes the line here
          writer.add(manifest.WRITTEN, row, in_key_order=True)
        written[:] = writer.flush()

      results[f'{output_format}_entry_us_per_row'] = round(
          _least(entries) / args.rows * 1e6, 2)
      part = manifest.Part(0, 1, None, None)
      summary = {}

      def merge():
        summary.update(manifest.write_part(part, written, config, lambda failure: None))

      before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
      results[f'{output_format}_merge_us_per_row'] = round(
          _least(merge) / args.rows * 1e6, 2)
      results[f'{output_format}_merge_peak_rss_mb'] = round(
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
      results[f'{output_format}_rss_before_mb'] = round(before / 1024)
      staged = os.path.join(folder, manifest.STAGED, summary['name'])
      results[f'{output_format}_bytes_per_row'] = round(
          os.path.getsize(staged) / args.rows, 1)
  print(json.dumps(results))
  return 0


if __name__ == '__main__':
  sys.exit(main())
