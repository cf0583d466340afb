"""Sorted run files on storage: how rows too many for one worker's memory are sorted.

Workers append rows (tuples, in `schema`'s column order) to a `RunWriter`, which writes
them, sorted by the key column, as Arrow IPC files under the output root's scratch
folder. A `Run` names one such file and keeps its index: the first key of each group of
rows. A reader wanting only the keys in [lo, hi) fetches only the groups that can hold
them (`RangeReader`), and a planner can cut all runs into equal key ranges
(`split_points`) from the index alone. A group is stored as record batches of a few rows
(`block_rows`), so a reader that hands its rows out range by range holds at most one
such batch of each run between ranges, while the index stays one key a group. `merged`
streams every row of many runs in key order with bounded memory. Keys compare as UTF-8
bytes, which is code point order, so Python's own string order and Arrow's agree.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import math
import uuid
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.compute as pc

from transforms.output import root_files

SCRATCH = '_unrecord_tmp'


def _releasing_pool() -> pa.MemoryPool:
  """jemalloc where this pyarrow has it, else the system allocator: both hand freed
  memory back. Arrow's default here, mimalloc, kept the pages a merge had freed, so a
  worker's peak grew with the rows it merged (docs/scale.md)."""
  try:
    return pa.jemalloc_memory_pool()
  except NotImplementedError:  # a pyarrow built without jemalloc
    return pa.system_memory_pool()


# Once per process that writes or merges runs, which is every worker of the job.
pa.set_memory_pool(_releasing_pool())
# Read-ahead per open local run file: a merge may hold many open at once, and a record
# batch is read whole anyway. On an object store a request costs more than its bytes, so
# there the root's default stays.
LOCAL_READ_BUFFER = 128 << 10


@dataclasses.dataclass(frozen=True)
class Run:
  """One sorted run file: its name under the root, its rows, and its index: the first
  key and the row count of each group. A group is stored as record batches of
  `block_rows` rows, the last one shorter."""
  name: str
  rows: int
  firsts: Tuple[str, ...]
  group_rows: Tuple[int, ...]
  block_rows: int

  def blocks(self, start: int = 0, stop: Optional[int] = None
             ) -> List[Tuple[int, int, Optional[str]]]:
    """(record batch number, its rows, its group's first key if it is the group's first
    batch, else None) of every batch of groups [start, stop)."""
    stop = len(self.group_rows) if stop is None else stop
    first = sum(math.ceil(rows / self.block_rows) for rows in self.group_rows[:start])
    found = []
    for key, rows in zip(self.firsts[start:stop], self.group_rows[start:stop]):
      for taken in range(0, rows, self.block_rows):
        found.append((first + len(found), min(self.block_rows, rows - taken),
                      None if taken else key))
    return found


class RunWriter:
  """Collects rows and writes them as sorted runs; `flush()` returns the Runs written.

  A run is written once `run_bytes` of rows are held (as the caller measures them), in
  groups of at most `group_rows` rows (one index key each), stored as record batches of
  at most `block_rows` (default: a batch a group). Run names are random, so a retried
  bundle's runs never overwrite a committed one; runs nobody reports are removed with
  the scratch folder at the end of the job.
  """

  def __init__(self, root: root_files.OutputRoot, schema: pa.Schema, *,
               run_bytes: int = 16 << 20, group_rows: int = 4096,
               block_rows: Optional[int] = None, prefix: str = 'run'):
    self._root = root
    self._schema = schema
    self._key = schema.names[0]
    self._run_bytes = run_bytes
    self._group_rows = group_rows
    self._block_rows = block_rows or group_rows
    self._prefix = prefix
    self._columns: List[list] = [[] for _ in schema.names]
    self._held = 0
    self.runs: List[Run] = []

  def add(self, row: Sequence, size: int) -> None:
    for column, value in zip(self._columns, row):
      column.append(value)
    self._held += size
    if self._held >= self._run_bytes:
      self._write_run()

  def add_columns(self, columns: Sequence[list], size: int) -> None:
    """Rows given as one list per column, as `add` of each would add them; `size`: all
    their sizes. The run is written once they bring it to `run_bytes`."""
    for column, values in zip(self._columns, columns, strict=True):
      column += values
    self._held += size
    if self._held >= self._run_bytes:
      self._write_run()

  def flush(self) -> List[Run]:
    """Writes what is held; returns (and forgets) every run written so far."""
    if self._columns[0]:
      self._write_run()
    runs, self.runs = self.runs, []
    return runs

  def discard(self) -> None:
    """Forgets rows held and runs written (a failed bundle's, which its retry makes
    again); the runs' files go with the scratch folder."""
    self._columns = [[] for _ in self._schema.names]
    self._held = 0
    self.runs = []

  def _write_run(self) -> None:
    table = pa.Table.from_arrays(
        [pa.array(column, type=field.type)
         for column, field in zip(self._columns, self._schema)], schema=self._schema)
    table = table.sort_by([(name, 'ascending') for name in self._schema.names[:2]])
    self.runs.append(write_run(self._root, table, self._group_rows, self._prefix,
                               self._block_rows))
    self._columns = [[] for _ in self._schema.names]
    self._held = 0


def write_run(root: root_files.OutputRoot, table: pa.Table, group_rows: int,
              prefix: str = 'run', block_rows: Optional[int] = None) -> Run:
  """Writes `table`, already sorted by its first column, as one run file."""
  return _write_groups(root, table.combine_chunks().to_batches(max_chunksize=group_rows),
                       table.schema, prefix, block_rows or group_rows)


def _write_groups(root: root_files.OutputRoot, groups: Iterable[pa.RecordBatch],
                  schema: pa.Schema, prefix: str, block_rows: int) -> Run:
  """Writes groups of rows, in key order, as one run file named from `prefix`."""
  name = f'{SCRATCH}/{prefix}-{uuid.uuid4().hex}'
  firsts, counts = [], []
  with root.open_write(name) as out:
    with pa.ipc.new_file(out, schema) as writer:
      for group in groups:
        if group.num_rows:
          for start in range(0, group.num_rows, block_rows):
            writer.write_batch(group.slice(start, block_rows))
          firsts.append(group.column(0)[0].as_py())
          counts.append(group.num_rows)
  return Run(name, sum(counts), tuple(firsts), tuple(counts), block_rows)


def _open(root: root_files.OutputRoot, run: Run):
  stream = (root.open_read(run.name, buffer=LOCAL_READ_BUFFER) if root.local
            else root.open_read(run.name))
  reader = pa.ipc.open_file(stream)
  expected = len(run.blocks())
  if reader.num_record_batches != expected:
    raise OSError(f'run {root.url_of(run.name)} holds {reader.num_record_batches} '
                  f'batches of {expected}; the store returned a short read')
  return reader


def _checked(root: root_files.OutputRoot, run: Run, reader, i: int, rows: int
             ) -> pa.RecordBatch:
  batch = reader.get_batch(i)
  if batch.num_rows != rows:
    raise OSError(f'run {root.url_of(run.name)} batch {i} read back {batch.num_rows} '
                  f'rows of {rows}; the store returned a short read')
  return batch


class RangeReader:
  """The rows of one run whose key is in [lo, hi) (None: unbounded), handed out in
  consecutive key ranges by `until`. Only the groups that can hold such keys are read
  (group i holds keys from firsts[i] up to firsts[i + 1], inclusive, as one key may run
  across a group boundary), each record batch once, and the file is opened only when a
  range wants a batch (runs of other paths' ranges are never opened). Between calls it
  holds at most one record batch."""

  def __init__(self, root: root_files.OutputRoot, run: Run, lo: Optional[str],
               hi: Optional[str]):
    firsts = run.firsts
    start = 0 if lo is None else max(bisect.bisect_left(firsts, lo) - 1, 0)
    stop = len(firsts) if hi is None else bisect.bisect_left(firsts, hi)
    self._root, self._run, self._lo, self._hi = root, run, lo, hi
    self._blocks = run.blocks(start, stop) if start < stop else []
    self._next = 0
    self._reader = None
    self._held: Optional[pa.RecordBatch] = None  # read, keys >= lo, not handed out yet

  def until(self, key: Optional[str]) -> List[pa.RecordBatch]:
    """The rows not handed out yet whose key is below `key` (None: below hi)."""
    bound = self._hi if key is None or (self._hi is not None and self._hi < key) else key
    found = []
    while self._held is not None or self._next < len(self._blocks):
      if self._held is None and bound is not None:
        group_first = self._blocks[self._next][2]
        if group_first is not None and group_first >= bound:
          break  # that group and every later one hold keys from bound on
      batch = self._held if self._held is not None else self._read()
      self._held = None
      keys = batch.column(0)
      # The keys are sorted, so those below a bound are a prefix (sliced: no copy).
      below = batch.num_rows if bound is None else pc.sum(pc.less(keys, bound)).as_py() or 0
      if below:
        found.append(batch.slice(0, below))
      if below < batch.num_rows:
        self._held = batch.slice(below)
        break
    if self._held is None and self._next == len(self._blocks):
      self.close()
    return found

  def _read(self) -> pa.RecordBatch:
    if self._reader is None:
      self._reader = _open(self._root, self._run)
    i, rows, _ = self._blocks[self._next]
    self._next += 1
    batch = _checked(self._root, self._run, self._reader, i, rows)
    if self._lo is not None:  # only the first groups read can hold keys below lo
      batch = batch.slice(pc.sum(pc.less(batch.column(0), self._lo)).as_py() or 0)
    return batch

  def close(self) -> None:
    self._reader = None
    self._next = len(self._blocks)


def rows_of(root: root_files.OutputRoot, run: Run) -> Iterator[tuple]:
  """Every row of `run` in order, as tuples, one batch in memory at a time."""
  reader = _open(root, run)
  for i, rows, _ in run.blocks():
    columns = [column.to_pylist() for column in _checked(root, run, reader, i, rows).columns]
    yield from zip(*columns)


def merged(root: root_files.OutputRoot, runs: Sequence[Run], schema: pa.Schema,
           fan_in: int = 32, group_rows: int = 256) -> Iterator[tuple]:
  """Every row of `runs` in key order, with at most `fan_in` runs open at once (more are
  first merged into intermediate runs of `group_rows`-row groups)."""
  runs = list(runs)
  while len(runs) > fan_in:
    group, runs = runs[:fan_in], runs[fan_in:]
    runs.append(_merge_into_run(root, group, schema, group_rows))
  return heapq.merge(*(rows_of(root, r) for r in runs), key=lambda row: row[0])


def _merge_into_run(root: root_files.OutputRoot, group: Sequence[Run], schema: pa.Schema,
                    group_rows: int) -> Run:
  rows = heapq.merge(*(rows_of(root, r) for r in group), key=lambda row: row[0])
  groups = (pa.RecordBatch.from_arrays(
      [pa.array(column, type=field.type) for column, field in zip(zip(*chunk), schema)],
      schema=schema) for chunk in blocks(rows, group_rows))
  return _write_groups(root, groups, schema, 'merged', group_rows)


def blocks(items: Iterable, size: int) -> Iterator[list]:
  """`items` in lists of `size` (the last one shorter), never more held at once."""
  block = []
  for item in items:
    block.append(item)
    if len(block) >= size:
      yield block
      block = []
  if block:
    yield block


def split_points(runs: Sequence[Run], range_rows: int, lo: Optional[str] = None,
                 hi: Optional[str] = None) -> List[str]:
  """Keys in (lo, hi) that cut the rows of `runs` in [lo, hi) (None: unbounded) into
  ranges of about `range_rows` rows and about equal size, from the runs' index alone
  (each group's rows counted at its first key); fewer when the keys do not tell that
  many ranges apart."""
  weighted = []
  for run in runs:  # each run's groups whose first key is in [lo, hi): one slice
    start = 0 if lo is None else bisect.bisect_left(run.firsts, lo)
    stop = len(run.firsts) if hi is None else bisect.bisect_left(run.firsts, hi)
    weighted.extend(zip(run.firsts[start:stop], run.group_rows[start:stop]))
  weighted.sort()
  total = sum(rows for _, rows in weighted)
  ranges = max(1, math.ceil(total / range_rows))
  points: List[str] = []
  seen = 0
  for key, rows in weighted:
    target = total * (len(points) + 1) / ranges
    if (seen >= target and len(points) < ranges - 1 and (lo is None or key > lo)
        and (not points or key > points[-1])):
      points.append(key)
    seen += rows
  return points
