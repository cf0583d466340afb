"""The export's own per-image cost, on one core, without Beam: where a worker's time goes.

    python -m bench.per_image 'bench/data/a_float32/train*' --files 4 [--profile|--steps] [-- export options]

Settles the job the way `unrecord export` does (schema sampling, options), then calls the
export's per-range work (`transforms.export.export_range`, which the export DoFn wraps)
directly on every record range of the first `--files` files, writing to `--output` (tmpfs by default). Prints wall and CPU time
per image; with `--profile`, the functions that take the most time under cProfile; with
`--steps`, what each step costs an image alone (the fastest of five passes over the same
records), beside the expert's read and `floor_atomic`'s write of the same files: what the
job's guarantees add to the floor, the arithmetic of docs/benchmarks.md's bounds. With
`--json`, the same figures as one JSON object (what `make bench` reads for its bounds).
Run it on a quiet machine: it measures one core, and anything else running shows.
"""

import argparse
import cProfile
import glob
import hashlib
import itertools
import json
import os
import pstats
import shutil
import sys
import time
from typing import Dict, Tuple

from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs import export_images
from bench import bounds
from bench import peers
from transforms import export
from transforms import plan as plan_lib
from transforms import progress
from transforms.images import render
from transforms.inputs import input_files
from transforms.inputs import record_ranges
from transforms.output import manifest as manifest_lib


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('pattern', help='input files (a glob)')
  parser.add_argument('--files', type=int, default=4, help='how many of them to read')
  parser.add_argument('--output', default='/dev/shm/unrecord-per-image')
  parser.add_argument('--profile', action='store_true')
  parser.add_argument('--steps', action='store_true',
                      help='time each step alone instead of the whole export')
  parser.add_argument('--json', action='store_true',
                      help='print the figures as one JSON object instead of text')
  args, export_argv = parser.parse_known_args(argv)
  files = sorted(glob.glob(args.pattern))[:args.files]
  if not files:
    parser.error(f'no file matches {args.pattern!r}')
  shutil.rmtree(args.output, ignore_errors=True)
  os.makedirs(args.output)
  options = PipelineOptions(['--input', ','.join(files), '--output', args.output,
                             '--quiet', *[a for a in export_argv if a != '--']])
  request = plan_lib.Request.from_options(options.view_as(export_images.ExportOptions))
  plan = plan_lib.plan_export(request, time.time())
  config = plan.config
  ranges = [file_range
            for item in input_files.expand_patterns(config.patterns, config.read.storage_options)
            for file_range in record_ranges.plan_file(item, config.read)]
  worker = export.RangeWorker(config)
  tally = progress.Tally(worker.progress)
  if args.steps:
    costs, images = steps(files, ranges, worker, tally, args.output)
    worker.close()
    shutil.rmtree(args.output, ignore_errors=True)
    if args.json:
      print(json.dumps({'images': images, 'steps': costs}))
    else:
      print_steps(costs, images, len(files))
    return 0
  profile = cProfile.Profile() if args.profile else None

  def work():
    for file_range in ranges:
      for _ in export.export_range(file_range, worker, tally):
        pass

  wall, cpu = time.perf_counter(), time.process_time()
  if profile:
    profile.runcall(work)
  else:
    work()
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  worker.close()
  images = 0
  for _, folders, names in os.walk(args.output):
    folders[:] = [f for f in folders if not f.startswith('_')]  # _unrecord_tmp: runs
    images += sum(1 for name in names if not name.startswith(('_', '.')))
  shutil.rmtree(args.output, ignore_errors=True)
  if args.json:
    # timed_seconds: the work's CPU time, the clock bench.run reads from every system
    print(json.dumps({'images': images, 'timed_seconds': cpu, 'wall_us': wall / images * 1e6,
                      'cpu_us': cpu / images * 1e6}))
    return 0
  print(f'{images} images from {len(ranges)} ranges of {len(files)} files: '
        f'{wall / images * 1e6:.0f} us wall, {cpu / images * 1e6:.0f} us CPU per image'
        f'{" (under cProfile)" if profile else ""}')
  if profile:
    pstats.Stats(profile, stream=sys.stdout).sort_stats('tottime').print_stats(25)
  return 0


JOB_TOTAL = 'job steps (sha256 counted once)'
FLOOR_TOTAL = 'floor steps'


def _per_item(step, items, passes: int = 5) -> float:
  """The fastest of `passes` runs of `step` over `items`, in microseconds an item."""
  fastest = float('inf')
  for _ in range(passes):
    started = time.perf_counter()
    for item in items:
      step(item)
    fastest = min(fastest, time.perf_counter() - started)
  return fastest / len(items) * 1e6


def steps(files, ranges, worker: export.RangeWorker, tally: progress.Tally,
          output: str) -> Tuple[Dict[str, float], int]:
  """Each per-image step of the export alone, and the floor's own two, in us an image;
  and how many images they were timed on."""
  config = worker.config
  records = [slot for file_range in ranges
             for slot in record_ranges.read_slots(
                 record_ranges.read_range(file_range, config.read), tally)
             if isinstance(slot, tuple)]
  images = [image for ref, payload in records
            for image in worker.records.decode(ref, payload)]
  names = [worker.namer.name(image) for image in images]
  rendered = [render.render(image, config.render, worker.decoder) for image in images]
  written = list(zip(images, names, rendered))
  rows = [manifest_lib.manifest_row(*item, config) for item in written]
  chunks = [rows[i:i + export.CHUNK_RECORDS]
            for i in range(0, len(rows), export.CHUNK_RECORDS)]
  entries = manifest_lib.EntryWriter(worker.root, config.manifest_format,
                                     config.manifest_part_rows, run_bytes=1 << 40)
  count = itertools.count()
  floor_folder = os.path.join(output, 'floor')
  os.makedirs(floor_folder)
  per_record = len(images) / len(records)
  extension = config.render.encode.extension
  job = [
      # Each record dropped once counted, as the expert's reader below and the export
      # (a chunk at a time) do: a list of them all would time the allocator instead.
      ('read + both CRCs', _per_item(
          lambda r: sum(1 for _ in record_ranges.read_slots(
              record_ranges.read_range(r, config.read), tally)),
          ranges, 3) * len(ranges) / len(images)),
      ('decode (layout, header check)', _per_item(
          lambda record: worker.records.decode(*record), records) / per_record),
      (bounds.NAME, _per_item(worker.namer.name, images)),
      ('render (encode, or passthrough)', _per_item(
          lambda image: render.render(image, config.render, worker.decoder), images)),
      (bounds.SHA256, _per_item(
          lambda item: hashlib.sha256(item[2].data).hexdigest(), written)),
      (bounds.ROW, _per_item(
          lambda item: manifest_lib.manifest_row(*item, config), written)),
      (bounds.ENTRY, _per_item(
          lambda chunk: entries.add_all(manifest_lib.WRITTEN, chunk, in_key_order=True),
          chunks, 1) * len(chunks) / len(rows)),
      ('write: temp file, rename', _per_item(
          lambda item: worker.root.write(f'{next(count)}-{item[1]}', item[2].data),
          written, 2)),
  ]
  floor = [
      ('read + both CRCs (expert)', _per_item(
          lambda path: sum(1 for _ in peers._tfrecords(path)), files, 3) *
       len(files) / len(images)),
      ('atomic write (floor_atomic)', _per_item(
          lambda item: peers._atomic_write(
              os.path.join(floor_folder, f'{next(count)}.{extension}'), item[2].data),
          written, 2)),
  ]
  costs = dict(job + floor)
  costs[JOB_TOTAL] = sum(c for label, c in job if label != bounds.SHA256)
  costs[FLOOR_TOTAL] = sum(c for _, c in floor)
  return costs, len(images)


def print_steps(costs: Dict[str, float], images: int, files: int) -> None:
  print(f'{images} images of {files} files; us an image, each step alone:')
  for label, cost in costs.items():
    print(f'  {label:34s} {cost:8.1f}')


if __name__ == '__main__':
  sys.exit(main())
