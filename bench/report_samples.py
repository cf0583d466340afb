"""The commit's sample merge against the number of manifest parts: its memory stays flat.

Each part's summary carries its `RowSampler` buckets: up to 48 classes of 8 rows, about
170 KB of manifest lines for data with 48 or more labels. The commit takes the summaries
one at a time, as the runner hands over the side input (`beam.pvalue.AsIter`), and keeps
only what the report can show (`manifest.SampleMerge`). Measured here with tracemalloc
over synthetic summaries of that worst case, made one at a time as the runner would
stream them: the peak of the merge alone, beside the summaries' own total (what holding
every summary, as the commit did before, costs). At the default 100,000 rows a part,
10^4 parts are 10^9 rows.

  python -m bench.report_samples [--parts 100,1000,10000]
"""

from __future__ import annotations

import argparse
import json
import random
import tracemalloc
from typing import Iterator, Tuple

from transforms.output import manifest

ROWS_PER_PART = 100_000


def _summaries(parts: int) -> Iterator[Tuple[str, list]]:
  """Worst-case summaries (48 of 64 labels, 8 rows each), in the runner's shuffled order."""
  order = list(range(parts))
  random.Random(parts).shuffle(order)
  for p in order:
    labels = random.Random(p).sample(range(64), manifest.MAX_SAMPLES)
    yield manifest.part_name(p, parts, 'jsonl'), [
        (label, [json.dumps({'path': f'train/{label}/{p:06d}-{i}.png', 'label': label,
                             'sha256': f'{p:032x}{i:032x}', 'source': 'x' * 300})
                 for i in range(manifest.SAMPLES_PER_CLASS)])
        for label in labels]


def measure(parts: int) -> dict:
  one = sum(len(line) for _, lines in next(_summaries(1))[1] for line in lines)
  tracemalloc.start()
  merged = manifest.SampleMerge()
  for name, buckets in _summaries(parts):
    merged.add_part(name, buckets)
  chosen = merged.chosen()
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  assert len(chosen) == manifest.MAX_SAMPLES
  return {'parts': parts, 'rows': parts * ROWS_PER_PART,
          'merge_peak_mb': round(peak / 2**20, 2),
          'all_summaries_mb': round(one * parts / 2**20, 1)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m bench.report_samples', description=__doc__)
  parser.add_argument('--parts', default='100,1000,10000')
  args = parser.parse_args(argv)
  results = [measure(int(n)) for n in args.parts.split(',')]
  for r in results:
    print(json.dumps(r))
  peaks = [r['merge_peak_mb'] for r in results]
  flat = max(peaks) <= 1.1 * min(peaks) + 0.5
  print(f"  {'met ' if flat else 'MISS'} report samples' merge memory flat over "
        f"{results[0]['parts']:,}-{results[-1]['parts']:,} parts: "
        f"{min(peaks):.2f}-{max(peaks):.2f} MB")
  return 0 if flat else 1


if __name__ == '__main__':
  raise SystemExit(main())
