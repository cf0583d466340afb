"""The export's own per-image cost, on one core, without Beam: where a worker's time goes.

    python -m bench.per_image 'bench/data/a_float32/train*' --files 4 [--profile] [-- export options]

Settles the job the way `unrecord export` does (schema sampling, options), then calls the
export's per-range work (`transforms.export.export_range`, which the export DoFn wraps)
directly on every record range of the first `--files` files, writing to `--output` (tmpfs by default). Prints wall and CPU time
per image; with `--profile`, the functions that take the most time under cProfile.
Run it on a quiet machine: it measures one core, and anything else running shows.
"""

import argparse
import cProfile
import glob
import os
import pstats
import shutil
import sys
import time

from apache_beam.options.pipeline_options import PipelineOptions

from beam_jobs import export_images
from transforms import export
from transforms import input_files
from transforms import plan as plan_lib
from transforms import progress
from transforms import read


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('pattern', help='input files (a glob)')
  parser.add_argument('--files', type=int, default=4, help='how many of them to read')
  parser.add_argument('--output', default='/dev/shm/unrecord-per-image')
  parser.add_argument('--profile', action='store_true')
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
            for file_range in read.plan_file(item, config.read)]
  worker = export.RangeWorker(config)
  tally = progress.Tally(worker.progress)
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
  print(f'{images} images from {len(ranges)} ranges of {len(files)} files: '
        f'{wall / images * 1e6:.0f} us wall, {cpu / images * 1e6:.0f} us CPU per image'
        f'{" (under cProfile)" if profile else ""}')
  if profile:
    pstats.Stats(profile, stream=sys.stdout).sort_stats('tottime').print_stats(25)
  return 0


if __name__ == '__main__':
  sys.exit(main())
