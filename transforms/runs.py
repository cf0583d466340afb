"""Sorted run files on storage: how rows too many for one worker's memory are sorted.

Workers append rows (tuples, in `schema`'s column order) to a `RunWriter`, which writes
them, sorted by the key column, as Arrow IPC files under the output root's scratch
folder. A `Run` names one such file and keeps the first key of each of its record
batches, so a reader wanting only the keys in [lo, hi) fetches only the batches that can
hold them (`read_slice`), and a planner can cut all runs into equal key ranges
(`split_points`) from those keys alone. `merged` streams every row of many runs in key
order with bounded memory. Keys compare as UTF-8 bytes, which is code point order, so
Python's own string order and Arrow's agree.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import uuid
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.compute as pc

from transforms import output_root

SCRATCH = '_unrecord_tmp'


@dataclasses.dataclass(frozen=True)
class Run:
  """One sorted run file: its name under the root, its rows, and the first key (and the
  row count) of each of its record batches."""
  name: str
  rows: int
  firsts: Tuple[str, ...]
  batch_rows: Tuple[int, ...]


class RunWriter:
  """Collects rows and writes them as sorted runs; `flush()` returns the Runs written.

  A run is written once `run_bytes` of rows are held (as the caller measures them), in
  record batches of at most `batch_rows` rows. Run names are random, so a retried
  bundle's runs never overwrite a committed one; runs nobody reports are removed with
  the scratch folder at the end of the job.
  """

  def __init__(self, root: output_root.OutputRoot, schema: pa.Schema, *,
               run_bytes: int = 16 << 20, batch_rows: int = 4096, prefix: str = 'run'):
    self._root = root
    self._schema = schema
    self._key = schema.names[0]
    self._run_bytes = run_bytes
    self._batch_rows = batch_rows
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
    self.runs.append(write_run(self._root, table, self._batch_rows, self._prefix))
    self._columns = [[] for _ in self._schema.names]
    self._held = 0


def write_run(root: output_root.OutputRoot, table: pa.Table, batch_rows: int,
              prefix: str = 'run') -> Run:
  """Writes `table`, already sorted by its first column, as one run file."""
  return _write_batches(root, table.combine_chunks().to_batches(max_chunksize=batch_rows),
                        table.schema, prefix)


def _write_batches(root: output_root.OutputRoot, batches: Iterable[pa.RecordBatch],
                   schema: pa.Schema, prefix: str) -> Run:
  """Writes record batches, in key order, as one run file named from `prefix`."""
  name = f'{SCRATCH}/{prefix}-{uuid.uuid4().hex}'
  firsts, counts = [], []
  with root.open_write(name) as out:
    with pa.ipc.new_file(out, schema) as writer:
      for batch in batches:
        if batch.num_rows:
          writer.write_batch(batch)
          firsts.append(batch.column(0)[0].as_py())
          counts.append(batch.num_rows)
  return Run(name, sum(counts), tuple(firsts), tuple(counts))


def _open(root: output_root.OutputRoot, run: Run):
  reader = pa.ipc.open_file(root.open_read(run.name))
  if reader.num_record_batches != len(run.firsts):
    raise OSError(f'run {root.url_of(run.name)} holds {reader.num_record_batches} '
                  f'batches of {len(run.firsts)}; the store returned a short read')
  return reader


def _checked(root: output_root.OutputRoot, run: Run, reader, i: int) -> pa.RecordBatch:
  batch = reader.get_batch(i)
  if batch.num_rows != run.batch_rows[i]:
    raise OSError(f'run {root.url_of(run.name)} batch {i} read back {batch.num_rows} '
                  f'rows of {run.batch_rows[i]}; the store returned a short read')
  return batch


def read_slice(root: output_root.OutputRoot, run: Run, lo: Optional[str],
               hi: Optional[str]) -> Optional[pa.Table]:
  """The rows of `run` whose key is in [lo, hi) (None: unbounded), or None if none.

  Only the batches that can hold such keys are read: batch i holds keys from firsts[i]
  up to firsts[i + 1] (inclusive, as one key may run across a batch boundary).
  """
  firsts = run.firsts
  start = 0 if lo is None else max(bisect.bisect_left(firsts, lo) - 1, 0)
  stop = len(firsts) if hi is None else bisect.bisect_left(firsts, hi)
  if start >= stop:
    return None
  reader = _open(root, run)
  table = pa.Table.from_batches([_checked(root, run, reader, i) for i in range(start, stop)])
  # The keys are sorted, so the rows in range are one slice (no copy): those below `lo`
  # and those from `hi` on are a prefix and a suffix, counted.
  key = table.column(0)
  begin = 0 if lo is None else pc.sum(pc.less(key, lo)).as_py() or 0
  end = table.num_rows if hi is None else pc.sum(pc.less(key, hi)).as_py() or 0
  return table.slice(begin, end - begin) if end > begin else None


def rows_of(root: output_root.OutputRoot, run: Run) -> Iterator[tuple]:
  """Every row of `run` in order, as tuples, one batch in memory at a time."""
  reader = _open(root, run)
  for i in range(reader.num_record_batches):
    columns = [column.to_pylist() for column in _checked(root, run, reader, i).columns]
    yield from zip(*columns)


def merged(root: output_root.OutputRoot, runs: Sequence[Run], schema: pa.Schema,
           fan_in: int = 32, batch_rows: int = 256) -> Iterator[tuple]:
  """Every row of `runs` in key order, with at most `fan_in` runs open at once (more are
  first merged into intermediate runs of `batch_rows`-row batches)."""
  runs = list(runs)
  while len(runs) > fan_in:
    group, runs = runs[:fan_in], runs[fan_in:]
    runs.append(_merge_into_run(root, group, schema, batch_rows))
  return heapq.merge(*(rows_of(root, r) for r in runs), key=lambda row: row[0])


def _merge_into_run(root: output_root.OutputRoot, group: Sequence[Run], schema: pa.Schema,
                    batch_rows: int) -> Run:
  rows = heapq.merge(*(rows_of(root, r) for r in group), key=lambda row: row[0])
  batches = (pa.RecordBatch.from_arrays(
      [pa.array(column, type=field.type) for column, field in zip(zip(*chunk), schema)],
      schema=schema) for chunk in blocks(rows, batch_rows))
  return _write_batches(root, batches, schema, 'merged')


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


def split_points(runs: Sequence[Run], parts: int) -> List[str]:
  """`parts - 1` keys that cut the rows of `runs` into `parts` ranges of about equal
  rows, from the runs' batch keys alone (each batch's rows counted at its first key);
  fewer when the keys do not tell that many ranges apart."""
  weighted = sorted((first, rows) for run in runs
                    for first, rows in zip(run.firsts, run.batch_rows))
  total = sum(rows for _, rows in weighted)
  points: List[str] = []
  seen = 0
  for key, rows in weighted:
    target = total * (len(points) + 1) / parts
    if seen >= target and len(points) < parts - 1 and (not points or key > points[-1]):
      points.append(key)
    seen += rows
  return points
