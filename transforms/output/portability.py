"""Which of a run's output names would break on Windows or a case-insensitive disk.

Counted over the manifest's final paths (each kept row's `path`, new and old alike), with
nothing per name passing through one worker: while a manifest part is written, its
paths go to `FoldWriter`, sorted runs keyed by `naming.fold(path)`
(transforms/output/sorted_runs.py); `plan_ranges` cuts those runs into fold-key ranges,
`check_range`, a task per range, counts each path's Windows problems
(`naming.windows_problems`) and the groups of paths whose folds are equal (on a
case-insensitive disk, all but one of each group is lost), and `combine` sums the
ranges' counts. Each summary holds a few examples, not the names.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.output import naming
from transforms.output import root_files
from transforms.output import sorted_runs

SCHEMA = pa.schema([('fold', pa.string()), ('path', pa.string())])
# Names per check task, and per slice it holds at once.
RANGE_ROWS = 200_000
SLICE_ROWS = 8192
GROUP_ROWS = 1024
EXAMPLES = 3


class FoldWriter:
  """Paths, written as runs sorted by their fold (`flush()` returns the runs)."""

  def __init__(self, root: root_files.OutputRoot):
    self._runs = sorted_runs.RunWriter(root, SCHEMA, run_bytes=8 << 20,
                                       group_rows=GROUP_ROWS, prefix='names')

  def add(self, paths: Sequence[str]) -> None:
    paths = list(paths)
    if paths:
      self._runs.add_columns([folds(paths), paths],
                             2 * sum(map(len, paths)) + 32 * len(paths))

  def flush(self) -> List[sorted_runs.Run]:
    return self._runs.flush()


def folds(paths: Sequence[str]) -> List[str]:
  """`naming.fold` of each path; ASCII ones (for which it is lower case) by Arrow."""
  column = pa.array(paths, pa.string())
  ascii_only = pc.string_is_ascii(column).to_numpy(zero_copy_only=False)
  lowered = pc.ascii_lower(column).to_pylist()
  if ascii_only.all():
    return lowered
  return [low if plain else naming.fold(path)
          for low, plain, path in zip(lowered, ascii_only.tolist(), paths)]


def problem_masks(paths: pa.Array) -> Dict[str, np.ndarray]:
  """Per PORTABILITY_PROBLEMS, which of `paths` have it: `naming.windows_problems` of
  each, over the column at once (naming.PROBLEM_PATTERNS, by Arrow's RE2)."""
  masks = {problem: pc.match_substring_regex(paths, pattern).to_numpy(zero_copy_only=False)
           for problem, pattern in naming.PROBLEM_PATTERNS.items()}
  maybe_long = np.flatnonzero(pc.greater(pc.utf8_length(paths),
                                         naming.PORTABLE_PATH_CHARS // 2).to_numpy(
                                             zero_copy_only=False))
  long = np.zeros(len(paths), dtype=bool)
  for i in maybe_long.tolist():
    long[i] = 'long' in naming.windows_problems(paths[i].as_py())
  masks['long'] = long
  return masks


def plan_ranges(runs: Sequence[sorted_runs.Run], range_rows: int = RANGE_ROWS) -> List[tuple]:
  """(lo, hi) fold-key ranges of about `range_rows` names (None: unbounded); none when
  there are no names."""
  if not any(run.rows for run in runs):
    return []
  bounds = [None, *sorted_runs.split_points(runs, range_rows), None]
  return list(zip(bounds[:-1], bounds[1:]))


def empty() -> dict:
  return {'names': 0, 'not_portable': 0, **{p: 0 for p in naming.PORTABILITY_PROBLEMS},
          'case_groups': 0, 'case_names': 0,
          'examples': {**{p: [] for p in naming.PORTABILITY_PROBLEMS}, 'case': []}}


def check_range(bounds: tuple, runs: Sequence[sorted_runs.Run],
                root: root_files.OutputRoot, slice_rows: int = SLICE_ROWS) -> dict:
  """The portability counts of the names whose fold is in [lo, hi): per Windows problem,
  how many names have it; `case_groups`, the groups of two or more names with one fold,
  and `case_names`, the names in them; up to EXAMPLES of each."""
  lo, hi = bounds
  found = empty()
  for table in _slices(root, lo, hi, runs, slice_rows):
    order = pc.sort_indices(table, sort_keys=[('fold', 'ascending'),
                                              ('path', 'ascending')])
    folds = table.column('fold').take(order).combine_chunks()
    paths = table.column('path').take(order).combine_chunks()
    found['names'] += len(paths)
    flagged = np.zeros(len(paths), dtype=bool)
    for problem, mask in problem_masks(paths).items():
      flagged |= mask
      found[problem] += int(mask.sum())
      room = EXAMPLES - len(found['examples'][problem])
      found['examples'][problem] += paths.take(np.flatnonzero(mask)[:room]).to_pylist()
    # Names with one fold sit together: a group is a run of equal folds (paths differ).
    same = np.zeros(len(paths), dtype=bool)
    if len(paths) > 1:
      equal = pc.equal(folds.slice(0, len(paths) - 1), folds.slice(1)).to_numpy(
          zero_copy_only=False)
      same[:-1] |= equal
      same[1:] |= equal
    flagged |= same
    found['not_portable'] += int(flagged.sum())
    grouped = np.flatnonzero(same)
    if grouped.size:
      group_folds = folds.take(grouped).to_pylist()
      group_paths = paths.take(grouped).to_pylist()
      start = 0
      while start < len(group_folds):
        end = start + 1
        while end < len(group_folds) and group_folds[end] == group_folds[start]:
          end += 1
        found['case_groups'] += 1
        found['case_names'] += end - start
        if len(found['examples']['case']) < EXAMPLES:
          found['examples']['case'].append(group_paths[start:end][:4])
        start = end
  return found


def _slices(root, lo: Optional[str], hi: Optional[str], runs: Sequence[sorted_runs.Run],
            slice_rows: int) -> Iterator[pa.Table]:
  """The runs' rows in [lo, hi) in consecutive key ranges of about `slice_rows` rows; a
  key's rows all fall in one."""
  readers = [sorted_runs.RangeReader(root, run, lo, hi) for run in runs]
  try:
    for bound in [*sorted_runs.split_points(runs, slice_rows, lo, hi), None]:
      batches = [batch for reader in readers for batch in reader.until(bound)]
      if batches:
        yield pa.Table.from_batches(batches, schema=SCHEMA)
  finally:
    for reader in readers:
      reader.close()


def combine(summaries: Sequence[dict]) -> dict:
  """The counts of the whole run from those of its ranges (in any order: the examples
  are the first in fold order)."""
  total = empty()
  for summary in sorted(summaries, key=_first_example):
    for key, value in summary.items():
      if key == 'examples':
        for kind, shown in value.items():
          total['examples'][kind] = (total['examples'][kind] + shown)[:EXAMPLES]
      else:
        total[key] += value
  return total


def _first_example(summary: dict) -> str:
  shown = [e if isinstance(e, str) else e[0] for kind in summary['examples'].values()
           for e in kind]
  return naming.fold(min(shown)) if shown else ''


_WORDS = {'reserved': 'reserved on Windows', 'trailing': 'end in a dot or space',
          'character': 'hold a character Windows refuses',
          'long': f'are longer than {naming.PORTABLE_PATH_CHARS} characters'}


def describe(summary: Optional[dict]) -> Optional[str]:
  """The report's line for non-portable names, e.g. "3 names are not portable: 2
  reserved on Windows (CON.png, aux.png), 1 pair differs only by case (Cat/1.png,
  cat/1.png); --portable_names makes them safe"; None when every name is portable."""
  if not summary:
    return None
  flagged = [(p, summary[p]) for p in naming.PORTABILITY_PROBLEMS if summary[p]]
  if not flagged and not summary['case_groups']:
    return None
  parts = [f'{count} {_WORDS[problem]} ({", ".join(summary["examples"][problem])}'
           f'{", ..." if count > len(summary["examples"][problem]) else ""})'
           for problem, count in flagged]
  if summary['case_groups']:
    groups = summary['case_groups']
    shown = '; '.join(', '.join(group) for group in summary['examples']['case'])
    if summary['case_names'] == 2 * groups:
      what = f'{groups} pair{"s differ" if groups > 1 else " differs"}'
    else:
      what = (f'{groups} group{"s" if groups > 1 else ""} of {summary["case_names"]} '
              f'names differ{"s" if groups == 1 else ""}')
    parts.append(f'{what} only by case or Unicode form, so a case-insensitive disk '
                 f'(macOS, Windows) keeps one of each ({shown}'
                 f'{"; ..." if groups > EXAMPLES else ""})')
  names = summary['not_portable']
  return (f'{names} name{"s are" if names != 1 else " is"} not portable: ' +
          ', '.join(parts) + '; --portable_names makes them safe')

