"""The manifest: one row per image file, written as sorted parts by many workers.

Layout: `_manifest/part-00000-of-00004.jsonl` (or `.parquet`), each part sorted by
output path and covering its own path range, the ranges in part order, so reading the
parts in order reads every row sorted by path. `_manifest/_parts.json` lists the parts
with their row counts and first and last paths. There is a part per
`export_config.MANIFEST_PART_ROWS` rows (at least one), so no worker handles more than
that many rows, whatever the run's size.

How it is made, with nothing per image passing through one worker:
1. Each worker writes an entry per image to an `EntryWriter`: sorted run files under
   the root's scratch folder (transforms/output/sorted_runs.py), never rows through the runner.
   The previous manifest's rows become runs the same way (`read_previous`, a task per
   previous part); a part that is damaged, missing or not listed is rebuilt there from
   the image files on disk (in a packed root, the shards' samples) instead of trusted.
2. `plan_parts` cuts all runs into path ranges of about MANIFEST_PART_ROWS rows, from the
   runs' batch keys alone.
3. `write_part`, a task per range, reads only its range of each run, a slice of
   SLICE_ROWS entries at a time, decides each path (below) and stages the part under
   `_manifest/_staged/`.
4. `commit` writes the list of staged parts as a journal, then moves them into place,
   removes parts and a single `_manifest.jsonl` of earlier runs, and writes
   `_parts.json`. A run killed during the moves leaves the journal, and the next run
   finishes them first (`recover`), so a manifest is never a mix of two runs' parts.

An entry holds, beside the row's JSON line, what deciding a path needs: its kind, `w`
(written by this run), `s` (left in place by --skip_existing) or `p` (the previous
manifest's row); the image's source key; bytes; passthrough; and its class. Paths never
hold NUL (naming.check_relative_path); UTF-8 byte order is path order.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import io
import json
import os
import re
import time
from typing import (Callable, Dict, Hashable, Iterable, Iterator, List, Optional, Sequence,
                    Tuple)

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from transforms import errors
from transforms.images import decode
from transforms.images import render
from transforms.output import checksums
from transforms.output import export_config
from transforms.output import naming
from transforms.output import root_files
from transforms.output import shard_contents
from transforms.output import shards as shards_lib
from transforms.output import sorted_runs
from transforms.pixels import image_formats

# Entries a part's task holds at once, about 0.6 KB each (docs/scale.md): a worker's
# memory is the same whatever the run's size.
SLICE_ROWS = 4096
# Rows per record batch of a manifest run: beside its slice, a part's task holds at most
# one such batch of each run.
RUN_BLOCK_ROWS = 128
STAGED = f'{naming.MANIFEST}/_staged'
JOURNAL = f'{STAGED}/_commit.json'
PARTS_INDEX = f'{naming.MANIFEST}/_parts.json'
_PART_NAME = re.compile(r'part-(\d{5})-of-(\d{5})\.(jsonl|parquet)$')
# Parquet is written in row groups of this many rows, each converted from JSON lines.
ROW_GROUP_ROWS = 8192

WRITTEN, SKIPPED, PREVIOUS = 'w', 's', 'p'
# The typed Parquet row (docs/output.md, "The manifest"). `label` and `id` are text whatever
# their feature's type, so every root's manifest has this one schema.
PARQUET_SCHEMA = pa.schema([
    ('path', pa.string()), ('source', pa.string()), ('index', pa.int64()),
    ('offset', pa.int64()), ('n', pa.int64()), ('key', pa.string()), ('id', pa.string()),
    ('label', pa.string()), ('label_name', pa.string()), ('bytes', pa.int64()),
    ('sha256', pa.string()), ('crc32c', pa.string()), ('blake3', pa.string()),
    ('format', pa.string()), ('encoder', pa.string()),
    ('passthrough', pa.bool_()), ('dtype_in', pa.string()), ('dtype_out', pa.string()),
    ('shape_in', pa.list_(pa.int64())), ('shape_out', pa.list_(pa.int64())),
    ('normalization', pa.list_(pa.string())), ('value_range', pa.list_(pa.float64())),
    # With --pack tar|parquet (transforms/shards.py): the shard, the image's member, and
    # where it is in the shard (a tar's data offset, a Parquet shard's row); else null.
    ('shard', pa.string()), ('member', pa.string()), ('member_offset', pa.int64()),
    ('shard_row', pa.int64()),
])
# The columns only a packed root's rows fill (null in a Parquet manifest of files).
SHARD_FIELDS = ('shard', 'member', 'member_offset', 'shard_row')
TEXT_FIELDS = ('id', 'label')
# A row's checksum of its file is in the column named after its algorithm
# (`row_checksum`); the others are absent from a JSONL row and null in Parquet.
CHECKSUM_FIELDS = checksums.ALGORITHMS
# Columns Parquet stores dictionary-encoded: all but those that differ from image to
# image, whose dictionary would only grow until it gave up, in memory and in bytes.
_DICTIONARY_COLUMNS = [name for name in PARQUET_SCHEMA.names
                       if name not in ('path', 'id', 'index', 'offset', 'bytes',
                                       *SHARD_FIELDS[1:],
                                       *CHECKSUM_FIELDS)]
# What deciding a path needs, in every entry; the path first, as the runs' sort key.
_DECISION_FIELDS = [
    ('path', pa.string()), ('kind', pa.string()), ('source_key', pa.string()),
    ('class_key', pa.string()), ('bytes', pa.int64()), ('passthrough', pa.bool_()),
]
_DECIDED = {name for name, _ in _DECISION_FIELDS}
# The rest of a Parquet row, as typed columns beside the decision fields.
_ROW_FIELDS = [field for field in PARQUET_SCHEMA if field.name not in _DECIDED]
# A JSONL manifest's entry carries its row as the JSON line to write; a Parquet one as
# the row's typed columns, so a Parquet part is written without any JSON parsed.
ENTRY_SCHEMAS = {
    'jsonl': pa.schema(_DECISION_FIELDS + [('line', pa.binary())]),
    'parquet': pa.schema(_DECISION_FIELDS + _ROW_FIELDS),
}
_ROW_NAMES = tuple(field.name for field in _ROW_FIELDS)


# ---------------------------------------------------------------------------------------
# Entries: what workers write, as sorted runs


def index_step(rows_per_part: int) -> int:
  """Rows per indexed group of a manifest run. The parts are planned from the groups'
  first paths, so a part's size is right to within a group per run; at most 1,024, so
  the runs' keys (which every part's task receives) stay a thousandth of the rows."""
  return max(1, min(1024, rows_per_part // 16))


def _source_key(row: dict) -> str:
  """What tells images apart: a replayed image has the same key, another image not."""
  return f'{row["source"]}\x01{row["index"]}\x01{row["n"]}'


def _passthrough(row: dict) -> Optional[bool]:
  """A row's passthrough as its entry holds it: null stays null (a rebuilt row does not
  know it), so a Parquet part says so as a JSONL one does."""
  value = row.get('passthrough')
  return None if value is None else bool(value)


class EntryWriter:
  """A worker's manifest entries, written as sorted runs (`flush()` returns them)."""

  def __init__(self, root: root_files.OutputRoot, output_format: str = 'jsonl',
               rows_per_part: int = export_config.MANIFEST_PART_ROWS, run_bytes: int = 8 << 20,
               block_rows: int = RUN_BLOCK_ROWS):
    self._format = output_format
    self._runs = sorted_runs.RunWriter(root, ENTRY_SCHEMAS[output_format],
                                       run_bytes=run_bytes,
                                       group_rows=index_step(rows_per_part),
                                       block_rows=block_rows, prefix='manifest')

  def add(self, kind: str, row: dict, line: Optional[bytes] = None, *,
          in_key_order: bool = False) -> None:
    """The entry for a manifest row. JSONL: its line is `line` if given (it ends with a
    newline), else made here (`manifest_line(row, in_key_order=...)`)."""
    label = row.get('label_name') or row.get('label')
    path, size = row['path'], row.get('bytes')
    if not isinstance(path, str):
      raise TypeError(f'a manifest row\'s path is {path!r}, not text')
    decision = (path, kind, _source_key(row), '' if label is None else str(label),
                size if isinstance(size, int) else None, _passthrough(row))
    if self._format == 'jsonl':
      if line is None:
        line = manifest_line(row, in_key_order=in_key_order)
      self._runs.add(decision + (line,), len(line) + len(path) + 64)
    else:
      self._runs.add(decision + tuple(row.get(name) for name in _ROW_NAMES),
                     len(path) + 400)

  def add_all(self, kind: str, rows: Sequence[dict], *, in_key_order: bool = False
              ) -> None:
    """`add(kind, row, in_key_order=...)` of each of `rows`, a column at a time."""
    paths = [row['path'] for row in rows]
    for path in paths:
      if not isinstance(path, str):
        raise TypeError(f'a manifest row\'s path is {path!r}, not text')
    labels = [row.get('label_name') or row.get('label') for row in rows]
    sizes = [row.get('bytes') for row in rows]
    columns = [
        paths, [kind] * len(rows), [_source_key(row) for row in rows],
        ['' if label is None else str(label) for label in labels],
        [size if isinstance(size, int) else None for size in sizes],
        [_passthrough(row) for row in rows],
    ]
    held = sum(map(len, paths))
    if self._format == 'jsonl':
      lines = [manifest_line(row, in_key_order=in_key_order) for row in rows]
      columns.append(lines)
      held += sum(map(len, lines)) + 64 * len(rows)
    else:
      columns += [[row.get(name) for row in rows] for name in _ROW_NAMES]
      held += 400 * len(rows)
    self._runs.add_columns(columns, held)

  def flush(self) -> List[sorted_runs.Run]:
    return self._runs.flush()


def _as_entries(rows: pa.Table, kind: str) -> pa.Table:
  """PARQUET_SCHEMA rows as Parquet entries of `kind`, sorted by path; rows without a
  path are left out (one without a source, `rebuilt_row`'s, stays)."""
  rows = rows.filter(pc.is_valid(rows.column('path')))
  text = lambda name: pc.cast(rows.column(name), pa.string())
  source_key = pc.binary_join_element_wise(
      rows.column('source'), text('index'), text('n'), '\x01',
      null_handling='replace', null_replacement='None')
  class_key = pc.coalesce(rows.column('label_name'), rows.column('label'), '')
  decided = {'kind': pa.array([kind] * rows.num_rows, pa.string()),
             'source_key': source_key, 'class_key': class_key}
  schema = ENTRY_SCHEMAS['parquet']
  table = pa.Table.from_arrays(
      [decided[name] if name in decided else rows.column(name) for name in schema.names],
      schema=schema)
  return table.sort_by('path')


@dataclasses.dataclass(frozen=True)
class Entry:
  """One entry of a path that needs a decision (duplicates, collisions, previous rows)."""
  position: int
  path: str
  kind: str
  source_key: str
  bytes: int
  passthrough: bool
  class_key: str
  line: bytes

  def row(self) -> dict:
    return orjson.loads(self.line)


def _entries(table: pa.Table, order: np.ndarray, positions: np.ndarray) -> List[Entry]:
  """The Entries at `positions` of `table` taken in `order`."""
  if not positions.size:
    return []
  taken = table.take(order[positions])
  lines = (taken.column('line').to_pylist() if 'line' in taken.column_names
           else [manifest_line(_present_checksums(row))
                 for row in taken.select(PARQUET_SCHEMA.names).to_pylist()])
  decided = taken.select([name for name, _ in _DECISION_FIELDS]).to_pylist()
  return [Entry(int(position), row['path'], row['kind'], row['source_key'],
                row['bytes'] or 0, bool(row['passthrough']), row['class_key'], line)
          for position, row, line in zip(positions.tolist(), decided, lines)]


# ---------------------------------------------------------------------------------------
# Reading a manifest: the parts (or an earlier version's single file)


def part_name(index: int, count: int, output_format: str) -> str:
  return f'part-{index:05d}-of-{count:05d}.{output_format}'


def part_files(root: root_files.OutputRoot) -> List[str]:
  """The manifest's files under the root, in path order: its parts, or else an earlier
  version's `_manifest.jsonl`, or nothing."""
  if root.exists(PARTS_INDEX):
    index = json.loads(root.read(PARTS_INDEX))
    return [f'{naming.MANIFEST}/{part["name"]}' for part in index['parts']]
  if root.exists(naming.LEGACY_MANIFEST):
    return [naming.LEGACY_MANIFEST]
  return []


def _file_rows(root: root_files.OutputRoot, name: str) -> Iterator[Tuple[dict, Optional[bytes]]]:
  """(row, its JSON line or None) for each row of one manifest file; JSON lines that do
  not hold a row are skipped."""
  if name.endswith('.parquet'):
    for table in _parquet_groups(root, name):
      for row in table.to_pylist():
        yield _present_checksums(row), None
    return
  with root.open_read(name) as f:
    for line in f:
      try:
        row = orjson.loads(line)
      except ValueError:
        continue
      if isinstance(row, dict):
        yield row, (line if line.endswith(b'\n') else line + b'\n')


def _parquet_groups(root: root_files.OutputRoot, name: str,
                    columns: Optional[Sequence[str]] = None) -> Iterator[pa.Table]:
  with root.open_read(name) as f:
    parquet = pq.ParquetFile(f, page_checksum_verification=True)
    for group in range(parquet.num_row_groups):
      yield parquet.read_row_group(group, columns=columns)


def _file_tables(root: root_files.OutputRoot, name: str, rows: int) -> Iterator[pa.Table]:
  """One manifest file's rows as PARQUET_SCHEMA tables of about `rows` rows (a JSONL
  file's `id` and `label` made text)."""
  if name.endswith('.parquet'):
    groups = map(_with_every_column, _parquet_groups(root, name))
  else:
    groups = (lines_to_table(b''.join(block))
              for block in sorted_runs.blocks(_jsonl_lines(root, name), ROW_GROUP_ROWS))
  held: List[pa.Table] = []
  for table in groups:
    held.append(table)
    if sum(t.num_rows for t in held) >= rows:
      yield pa.concat_tables(held)
      held = []
  if held:
    yield pa.concat_tables(held)


def _with_every_column(table: pa.Table) -> pa.Table:
  """A Parquet part's table with PARQUET_SCHEMA's columns, those it lacks as nulls (an
  earlier version's part has no crc32c or blake3 column)."""
  missing = [field for field in PARQUET_SCHEMA if field.name not in table.column_names]
  for field in missing:
    table = table.append_column(field, pa.nulls(table.num_rows, field.type))
  return table.select(PARQUET_SCHEMA.names) if missing else table


def _jsonl_lines(root: root_files.OutputRoot, name: str) -> Iterator[bytes]:
  with root.open_read(name) as f:
    for line in f:
      if line.strip():
        yield line if line.endswith(b'\n') else line + b'\n'


def read_rows(root: root_files.OutputRoot) -> Iterator[dict]:
  """Every row of the root's manifest, in path order."""
  for name in part_files(root):
    for row, _ in _file_rows(root, name):
      yield row


def listed_paths(root: root_files.OutputRoot) -> Iterator[str]:
  """The path of every row of the root's manifest (of Parquet, only that column read)."""
  for name in part_files(root):
    if name.endswith('.parquet'):
      for table in _parquet_groups(root, name, columns=['path']):
        yield from table.column('path').to_pylist()
    else:
      for row, _ in _file_rows(root, name):
        if isinstance(row.get('path'), str):
          yield row['path']


# ---------------------------------------------------------------------------------------
# Reading the previous manifest, and rebuilding the rows of what of it is damaged


@dataclasses.dataclass(frozen=True)
class PreviousFile:
  """One task of reading the previous manifest (`previous_files` plans them).

  A file of it (`name`), with what `_parts.json` lists for it (rows, first and last
  path; None where it lists nothing), or else a sweep (`name` None). `damage`: what
  planning already found wrong (the part is missing, not listed, `_parts.json` cannot be
  read); such a task, like one whose part turns out damaged as it is read, rebuilds the
  rows from the image files on disk, or the shards' samples (`read_previous`). A sweep
  rebuilds the rows of every image outside the `listed` path ranges, keeping what the
  `candidates` (part files `_parts.json` does not list) hold for those images."""
  name: Optional[str]
  rows: Optional[int] = None
  first: Optional[str] = None
  last: Optional[str] = None
  damage: Optional[str] = None
  candidates: Tuple[str, ...] = ()
  listed: Tuple[Tuple[str, str], ...] = ()


def previous_files(config: export_config.ExportConfig) -> List[PreviousFile]:
  """The previous manifest's files to read, once an interrupted commit has been
  finished, and what is already known to be wrong with them."""
  root = root_files.OutputRoot(config.output, config.read.storage_options)
  recover(root)
  return plan_previous(root)


def plan_previous(root: root_files.OutputRoot) -> List[PreviousFile]:
  """A task per part `_parts.json` lists (a missing one marked so), a sweep for part
  files it does not list; with no readable `_parts.json` beside part files, one sweep
  of the whole root; with no parts, an earlier version's `_manifest.jsonl` or nothing.
  Lists `_manifest/` and reads `_parts.json`, nothing more."""
  present = sorted(name for name in _names_in(root, naming.MANIFEST)
                   if _PART_NAME.match(name))
  index, problem = _read_index(root)
  if index is None:
    if not present:
      return ([PreviousFile(naming.LEGACY_MANIFEST)]
              if root.exists(naming.LEGACY_MANIFEST) else [])
    return [PreviousFile(None, damage=f'{PARTS_INDEX} was {problem}',
                         candidates=tuple(f'{naming.MANIFEST}/{n}' for n in present))]
  tasks, names = [], set()
  for part in index['parts']:
    names.add(part['name'])
    tasks.append(PreviousFile(
        f'{naming.MANIFEST}/{part["name"]}', part['rows'], part['first'], part['last'],
        damage=None if part['name'] in present else f'missing (listed in {PARTS_INDEX})'))
  unlisted = [name for name in present if name not in names]
  if unlisted:
    tasks.append(PreviousFile(
        None, damage=f'not listed in {PARTS_INDEX}',
        candidates=tuple(f'{naming.MANIFEST}/{n}' for n in unlisted),
        listed=tuple((p['first'], p['last']) for p in index['parts']
                     if p['first'] is not None)))
  return tasks


def _read_index(root: root_files.OutputRoot) -> Tuple[Optional[dict], str]:
  """(`_parts.json`, '') if it reads as the commit wrote it: parts named in order, each
  with its rows and path range, the ranges in order; else (None, what is wrong)."""
  try:
    data = root.read(PARTS_INDEX)
  except FileNotFoundError:
    return None, 'missing'
  try:
    index = json.loads(data)
    parts = index['parts']
    names = [part['name'] for part in parts]
    ok = (isinstance(parts, list) and names == sorted(set(names))
          and index.get('rows', 0) == sum(part['rows'] for part in parts))
    previous_last = None
    for part in parts:
      first, last, rows = part['first'], part['last'], part['rows']
      ok = ok and bool(_PART_NAME.match(part['name'])) and isinstance(rows, int) and (
          (first is None and last is None and rows == 0) or
          (isinstance(first, str) and isinstance(last, str) and first <= last and rows > 0
           and (previous_last is None or previous_last < first)))
      previous_last = last if last is not None else previous_last
  except (ValueError, KeyError, TypeError):
    ok = False
  if not ok:
    return None, 'damaged (it does not read as the list of parts)'
  return index, ''


class _Damaged(Exception):
  """A part of the previous manifest is not what `_parts.json` says it is."""


def read_previous(task: PreviousFile, config: export_config.ExportConfig
                  ) -> Tuple[List[sorted_runs.Run], Optional[dict]]:
  """(the rows of one task of the previous manifest as sorted runs of `p` entries in this
  run's manifest format, what was repaired or None).

  A part that is missing, cut short, garbled (unreadable, fewer or other rows than
  `_parts.json` lists, out of path order) or not listed is not trusted: its rows are
  rebuilt from the image files on disk in its path range, or in a packed root from the
  shards' samples there (`_rebuild`), and the repair is
  returned for the report's warning line. Never raised for a damaged part: a damaged
  manifest would stop every later run, so a run repairs it instead."""
  root = root_files.OutputRoot(config.output, config.read.storage_options)
  damage = task.damage
  if task.name is not None and damage is None:
    try:
      return _previous_runs(root, task, config), None
    except _Damaged as e:
      damage = str(e)
  if task.name is None:  # a sweep: everything outside the listed parts' ranges
    scope = _Scope(task.listed, inside=False)
    candidates = task.candidates
    subject = (PARTS_INDEX if damage.startswith(PARTS_INDEX)
               else ', '.join(task.candidates))
  else:
    scope = _Scope(((task.first, task.last),) if task.first is not None else (),
                   inside=True)
    candidates = (task.name,) if root.exists(task.name) else ()
    subject = task.name
  runs, kept, rebuilt = _rebuild(root, config, scope, candidates)
  # In a packed root the images are the shards' samples (`_rebuild`).
  found_in, hashed_from = (('the shards', 'its shard') if config.shards.packed
                           else ('the image files on disk', 'the file'))
  if subject == PARTS_INDEX:
    what = f'{damage}; rebuilt the manifest from its parts and {found_in}'
  else:
    what = f'{subject} was {damage}; rebuilt its rows from {found_in}'
  warning = (f'{what}: {kept + rebuilt} row(s), {rebuilt} of them hashed again from '
             f'{hashed_from}')
  return runs, {'part': subject, 'damage': damage, 'rows_kept': kept,
                'rows_rebuilt': rebuilt, 'warning': warning}


def previous_runs(name: str, config: export_config.ExportConfig) -> List[sorted_runs.Run]:
  """The rows of one file of the previous manifest, trusted as it reads."""
  return read_previous(PreviousFile(name), config)[0]


def _previous_runs(root: root_files.OutputRoot, task: PreviousFile,
                   config: export_config.ExportConfig) -> List[sorted_runs.Run]:
  """`task`'s part as sorted runs of `p` entries, checked against what `_parts.json`
  lists for it as it is read; raises _Damaged."""
  check = _PartCheck(task)
  try:
    if config.manifest_format == 'parquet':
      step = index_step(config.manifest_part_rows)
      runs = []
      for table in _file_tables(root, task.name, SLICE_ROWS):
        check.paths(table.column('path'))
        entries = _as_entries(table, PREVIOUS)
        if entries.num_rows:
          runs.append(sorted_runs.write_run(root, entries, step, 'manifest', RUN_BLOCK_ROWS))
    else:
      writer = EntryWriter(root, 'jsonl', config.manifest_part_rows)
      for row, line in _file_rows(root, task.name):
        try:
          writer.add(PREVIOUS, row, line)
        except (KeyError, TypeError):
          continue
        check.path(row['path'])
      runs = writer.flush()
  except FileNotFoundError as e:
    raise _Damaged(f'missing (listed in {PARTS_INDEX})') from e
  except OSError as e:
    if e.errno is not None:  # the storage's own fault (EIO, EACCES...), not the part's
      raise
    raise _Damaged(f'cut short or garbled (unreadable: {_first_line(e)})') from e
  except (pa.ArrowException, ValueError) as e:
    raise _Damaged(f'cut short or garbled (unreadable: {_first_line(e)})') from e
  check.finish()
  return runs


def _first_line(error: BaseException) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


class _PartCheck:
  """Whether a part's rows, as they are read, are those `_parts.json` lists for it:
  its count of rows, in strict path order from its first path to its last. Raises
  _Damaged when they are not; with nothing listed (an earlier version's file), checks
  nothing."""

  def __init__(self, task: PreviousFile):
    self._task = task
    self._rows = 0
    self._last: Optional[str] = None

  def paths(self, paths: pa.ChunkedArray) -> None:
    """The next rows' paths, a column."""
    if self._task.rows is None or not len(paths):
      return
    if paths.null_count:
      raise _Damaged('damaged (a row has no path)')
    in_order = len(paths) < 2 or pc.all(pc.less(paths.slice(0, len(paths) - 1),
                                                 paths.slice(1))).as_py()
    if not in_order:
      raise self._out_of_range()
    self._next(paths[0].as_py())
    self._rows += len(paths) - 1
    self._last = paths[len(paths) - 1].as_py()

  def path(self, path: str) -> None:
    """The next row's path."""
    if self._task.rows is not None:
      self._next(path)

  def _next(self, path: str) -> None:
    if (path != self._task.first if self._last is None else path <= self._last):
      raise self._out_of_range()
    self._rows += 1
    self._last = path

  @staticmethod
  def _out_of_range() -> '_Damaged':
    return _Damaged(f'damaged (its rows are not in the path range {PARTS_INDEX} lists)')

  def finish(self) -> None:
    task = self._task
    if task.rows is None:
      return
    if self._rows != task.rows or self._last != task.last:
      raise _Damaged(f'cut short or garbled (it holds {self._rows} readable row(s), '
                     f'{PARTS_INDEX} lists {task.rows})')


@dataclasses.dataclass(frozen=True)
class _Scope:
  """The paths a rebuild makes rows for: those in the path `ranges` (each [first, last],
  in order, not overlapping), or with `inside` False those outside every one of them."""
  ranges: Tuple[Tuple[str, str], ...]
  inside: bool

  def holds(self, path: str) -> bool:
    at = bisect.bisect_right([lo for lo, _ in self.ranges], path) - 1
    return (at >= 0 and path <= self.ranges[at][1]) == self.inside

  def meets(self, lo: str, hi: str) -> bool:
    """Whether it may hold a path in [lo, hi): a shard's samples are read only then."""
    if self.inside:
      return any(lo <= last and hi > first for first, last in self.ranges)
    at = bisect.bisect_right([first for first, _ in self.ranges], lo) - 1
    return not (at >= 0 and hi <= self.ranges[at][1])


def _rebuild(root: root_files.OutputRoot, config: export_config.ExportConfig,
             scope: _Scope, candidates: Sequence[str]
             ) -> Tuple[List[sorted_runs.Run], int, int]:
  """(runs of `p` entries, rows kept, rows rebuilt): a row for each image file under
  the root whose path `scope` holds, and in a packed root (--pack tar|parquet) for each
  sample of its shards.

  A file keeps a row that one of the `candidates` (part files not trusted as they are)
  still holds for it, if the row's size is the file's and, where the part did not read
  whole, its checksum is too (the file is hashed again); any other file gets
  `rebuilt_row`, hashed again. A sample likewise keeps a row that names its shard's
  member where it is, with its size (and checksum); any other gets `rebuilt_sample_row`.
  Holds the root's listing in memory, one path per file, as --overwrite's sweep does,
  and of the shards a path, size and checksum per sample that a candidate row names
  (docs/scale.md); a shard's bytes are read a sample at a time."""
  packed = config.shards.packed
  on_disk = {path: size for path, size in _image_files(root, packed) if scope.holds(path)}
  writer = EntryWriter(root, config.manifest_format, config.manifest_part_rows)
  rebuilt, chosen = 0, set()
  if packed:
    chosen, rebuilt = _rebuild_samples(root, config, scope, candidates, writer)
  named, kept = set(), 0
  for number, name in enumerate(candidates):
    whole = _reads_whole(root, name)
    for ordinal, (row, line) in enumerate(_salvaged_rows(root, name)):
      path = row.get('path')
      if not isinstance(path, str) or path in named:
        continue
      if (number, ordinal) not in chosen:
        if path not in on_disk or row.get('bytes') != on_disk[path]:
          continue
        if not whole and not _checksum_matches(root, row, path):
          continue
      if config.manifest_format == 'parquet':
        row, line = _with_text_fields(dict(row)), None
      try:
        writer.add(PREVIOUS, row, line)
      except (KeyError, TypeError):
        continue
      named.add(path)
      kept += 1
  for path in sorted(set(on_disk) - named):
    row = rebuilt_row(root, path, config)
    if row is not None:
      writer.add(PREVIOUS, row)
      rebuilt += 1
  return writer.flush(), kept, rebuilt


def _rebuild_samples(root: root_files.OutputRoot, config: export_config.ExportConfig,
                     scope: _Scope, candidates: Sequence[str], writer: 'EntryWriter'
                     ) -> Tuple[set, int]:
  """The samples of a packed root's shards in `scope`: ({(candidate, row number)} of the
  candidates' rows that still match their sample, rows rebuilt), a `rebuilt_sample_row`
  added to `writer` for every other sample that is a whole image.

  The candidates are read first, for what each row in scope claims of its sample, so
  each shard is read once and a sample's bytes are let go as soon as they are checked;
  `_rebuild` then adds the matching rows as they read. Shards `scope` cannot hold a path
  of are not read; one that is gone or not whole gives no rows (`unrecord verify` names
  it)."""
  claims: Dict[str, List[Tuple[Tuple[int, int], dict, bool]]] = {}
  for number, name in enumerate(candidates):
    whole = _reads_whole(root, name)
    for ordinal, (row, _) in enumerate(_salvaged_rows(root, name)):
      path = row.get('path')
      if isinstance(path, str) and row.get('shard') and scope.holds(path):
        claim = {k: row.get(k) for k in ('bytes', 'member', 'member_offset', 'shard_row')}
        claim['checksum'] = row_checksum(row)
        claims.setdefault(path, []).append(((number, ordinal), claim, whole))
  chosen, rebuilt = set(), 0
  for shard in shard_contents.shard_names(root):
    pack = shard_contents.pack_of(shard)
    if not scope.meets(shard + '/', shard + '0'):  # '0' follows '/': past its paths
      continue
    try:
      with root.open_read(shard) as f:
        for image in shard_contents.packed_images(f, pack):
          path = shards_lib.member_path(shard, image.member)
          if not scope.holds(path):
            continue
          match = next((key for key, claim, whole in claims.pop(path, ())
                        if _claim_matches(claim, image, pack, whole)), None)
          if match is not None:
            chosen.add(match)
            continue
          row = rebuilt_sample_row(shard, image, config)
          if row is not None:
            writer.add(PREVIOUS, row)
            rebuilt += 1
    except (FileNotFoundError, shard_contents.ShardDamage):
      continue
  return chosen, rebuilt


def _claim_matches(claim: dict, image: shard_contents.PackedImage, pack: str,
                   whole: bool) -> bool:
  """Whether what a salvaged row says of its sample is the shard's: the member, where it
  is, its size and, where the row's part did not read whole, its checksum."""
  where = claim['member_offset'] if pack == 'tar' else claim['shard_row']
  if (claim['member'], where, claim['bytes']) != (image.member, image.where,
                                                  len(image.data)):
    return False
  held = claim['checksum']
  return whole or (held is not None and held[1] == checksums.digest(image.data, held[0]))


def _image_files(root: root_files.OutputRoot, packed: bool = False
                 ) -> Iterator[Tuple[str, Optional[int]]]:
  """(path, size) of every file under the root but unrecord's own (`_*` at the top, temp
  names); `packed`: nor the shards and their index, whose images are their samples."""
  prefix = root.path('')
  for found, info in root.fs.find(root.root, detail=True).items():
    if not found.startswith(prefix):
      continue
    path = found[len(prefix):]
    if path.split('/', 1)[0].startswith('_') or root_files.is_temp_name(path):
      continue
    if packed and (path == shards_lib.INDEX or shard_contents.pack_of(path)):
      continue
    yield path, info.get('size')


def _reads_whole(root: root_files.OutputRoot, name: str) -> bool:
  """Whether every row of a manifest file reads, in strict path order."""
  last = None
  try:
    if name.endswith('.parquet'):
      for table in _parquet_groups(root, name, columns=['path']):
        for path in table.column('path').to_pylist():
          if not isinstance(path, str) or (last is not None and path <= last):
            return False
          last = path
      return True
    with root.open_read(name) as f:
      for line in f:
        if not line.strip():
          continue
        row = orjson.loads(line)
        path = row.get('path') if isinstance(row, dict) else None
        if not isinstance(path, str) or (last is not None and path <= last):
          return False
        last = path
  except (pa.ArrowException, OSError, ValueError):
    return False
  return True


def _salvaged_rows(root: root_files.OutputRoot, name: str
                   ) -> Iterator[Tuple[dict, Optional[bytes]]]:
  """(row, its JSON line or None) of each row of a manifest file that still reads: lines
  that do not parse, and Parquet row groups that do not read, are passed over."""
  try:
    if name.endswith('.parquet'):
      with root.open_read(name) as f:
        parquet = pq.ParquetFile(f, page_checksum_verification=True)
        for group in range(parquet.num_row_groups):
          try:
            rows = parquet.read_row_group(group).to_pylist()
          except (pa.ArrowException, OSError, ValueError):
            continue
          for row in rows:
            yield row, None
      return
    yield from _file_rows(root, name)
  except (pa.ArrowException, OSError, ValueError):
    return


def rebuilt_row(root: root_files.OutputRoot, path: str, config: export_config.ExportConfig
                ) -> Optional[dict]:
  """The manifest row of an image file whose row was lost, from the file alone: its
  path, bytes, checksum (of `--checksum`), format, shape_out and dtype_out. What only the
  record knew (source, index, offset, n, key, id, label, shape_in, dtype_in, and how it
  was made: encoder, normalization, value_range, passthrough) is null: a later run that
  reads the record again writes it (--skip_existing prefers its own row to this one).
  None when the file is gone or is not a whole image."""
  found = _whole_image(root, path, config)
  if found is None:
    return None
  data, shape, dtype = found
  row = {name: None for name in PARQUET_SCHEMA.names
         if name not in CHECKSUM_FIELDS or name == config.checksum}
  row.update(path=path, bytes=len(data), format=image_formats.sniff_format(data),
             dtype_out=dtype, shape_out=list(shape) if shape else None)
  row[config.checksum] = checksums.digest(data, config.checksum)
  return row


def rebuilt_sample_row(shard: str, image: shard_contents.PackedImage,
                       config: export_config.ExportConfig) -> Optional[dict]:
  """The manifest row of a shard's sample whose row was lost, from the shard alone: what
  a fresh run's row says of the image (path `SHARD/MEMBER`, shard, member, member_offset
  or shard_row, bytes, checksum, format, shape_out, dtype_out), and the record's
  provenance the sample carries (`KEY.json` or the Parquet row: id, label, label_name,
  source, index, offset, n, and key from image_key). How it was made (encoder,
  normalization, value_range, passthrough, shape_in, dtype_in) is null, as the shard does
  not say. None when the sample is not a whole image."""
  try:
    shape, dtype = image_formats.check_encoded(image.data, None, config.image.max_pixels)
  except errors.UnrecordError:
    return None
  tar = shard_contents.pack_of(shard) == 'tar'
  row = {name: None for name in PARQUET_SCHEMA.names
         if name not in CHECKSUM_FIELDS or name == config.checksum}
  meta = image.meta
  for field, meta_field, kinds in _PROVENANCE:
    value = meta.get(meta_field)
    if isinstance(value, kinds) and not isinstance(value, bool):
      row[field] = value
  row.update(path=shards_lib.member_path(shard, image.member), shard=shard,
             member=image.member, member_offset=image.where if tar else None,
             shard_row=None if tar else image.where, bytes=len(image.data),
             format=image_formats.sniff_format(image.data), dtype_out=dtype,
             shape_out=list(shape) if shape else None)
  row[config.checksum] = checksums.digest(image.data, config.checksum)
  return _with_text_fields(row) if config.manifest_format == 'parquet' else row


# (row field, its name in a sample's provenance, the types it may hold): a value of
# another type (a garbled `KEY.json`) is left null rather than written.
_PROVENANCE = (
    ('id', 'id', (str, int, float)), ('label', 'label', (str, int)),
    ('label_name', 'label_name', str), ('source', 'source', str), ('index', 'index', int),
    ('offset', 'offset', int), ('n', 'n', int), ('key', 'image_key', str),
)


def _checksum_matches(root: root_files.OutputRoot, row: dict, path: str) -> bool:
  """Whether a salvaged row's checksum, of whichever algorithm it holds, is the file's."""
  held = row_checksum(row)
  return held is not None and held[1] == _checksum_or_none(root, path, held[0])


def any_previous(root: root_files.OutputRoot) -> bool:
  """Whether the root holds any manifest file: parts, an interrupted commit's staged
  ones, or an earlier version's `_manifest.jsonl`."""
  return root.exists(naming.MANIFEST) or root.exists(naming.LEGACY_MANIFEST)


# ---------------------------------------------------------------------------------------
# Writing the parts: plan, then one task per path range


@dataclasses.dataclass(frozen=True)
class Part:
  """One part of the manifest: the paths in [lo, hi) (None: unbounded)."""
  index: int
  count: int
  lo: Optional[str]
  hi: Optional[str]


def plan_parts(runs: Sequence[sorted_runs.Run],
               rows_per_part: int = export_config.MANIFEST_PART_ROWS) -> List[Part]:
  """The manifest's parts: a path range per `rows_per_part` entries, at least one."""
  points = sorted_runs.split_points(runs, rows_per_part)
  bounds = [None, *points, None]
  return [Part(i, len(points) + 1, bounds[i], bounds[i + 1]) for i in range(len(points) + 1)]


@dataclasses.dataclass
class Collision:
  """Different images that were given one output name; `kept` is the one on disk.

  `skipped` of the `others` were left by --skip_existing, finding the file another image
  of this run had written."""
  path: str
  kept: Optional[dict]
  others: List[dict]
  skipped: int = 0


@dataclasses.dataclass
class PartResult:
  written: int = 0
  skipped: int = 0
  kept_from_previous: int = 0
  bytes: int = 0
  passthrough: int = 0
  stale: List[str] = dataclasses.field(default_factory=list)
  collisions: List[Collision] = dataclasses.field(default_factory=list)

  def count(self, other: 'PartResult') -> None:
    """Adds `other`'s counts (not its stale paths and collisions) to this one's."""
    for name in ('written', 'skipped', 'kept_from_previous', 'bytes', 'passthrough'):
      setattr(self, name, getattr(self, name) + getattr(other, name))


def decide(table: pa.Table, *, keep_previous: Callable[[str], bool],
           on_disk_sha256: Optional[Callable[[str], Optional[str]]] = None,
           order: Optional[np.ndarray] = None,
           on_disk_checksum: Optional[Callable[[str, str], Optional[str]]] = None
           ) -> Tuple[np.ndarray, Dict[int, Tuple[str, bytes]], np.ndarray, PartResult]:
  """Which entries of `table` become manifest rows, taken in `order` (indices that sort
  it by path; None: it is sorted). Positions below are places in that order.

  Returns (keep, sampled_as, sampled, result): `keep` marks the rows to write; `sampled`
  the written or skipped rows, the report's sample candidates, with `sampled_as[i]` the
  class and line to show for row i where that is another entry's.

  Per path: this run's row wins (replays of one image write identical rows; different
  images with one name keep the written row whose checksum matches the file on disk
  (`on_disk_checksum(path, algorithm)`, or `on_disk_sha256(path)` for sha256 rows), the
  others become collisions, also those --skip_existing left because an image of this run
  wrote their name first); an image --skip_existing left keeps the previous manifest's row
  if there is one, else a row made from its file; a path only the previous manifest has
  is kept if `keep_previous(its source)`, else reported in `stale`.
  """
  n = table.num_rows
  order = np.arange(n) if order is None else order
  if on_disk_checksum is None:
    on_disk_checksum = lambda path, algorithm: (
        on_disk_sha256(path) if on_disk_sha256 and algorithm == 'sha256' else None)

  def column(name):
    return table.column(name).take(order)

  paths = column('path')
  repeated = np.zeros(n, dtype=bool)
  if n > 1:
    same = pc.equal(paths.slice(0, n - 1), paths.slice(1)).to_numpy(zero_copy_only=False)
    repeated[:-1] |= same
    repeated[1:] |= same
  kinds = column('kind')
  # The usual cases, one entry for a path, are decided by columns and never parsed: an
  # image written once is kept; a path only the previous manifest has, by its source.
  keep = pc.equal(kinds, WRITTEN).to_numpy(zero_copy_only=False) & ~repeated
  sampled = keep.copy()
  sizes = pc.fill_null(column('bytes'), 0).to_numpy()
  passthrough = pc.fill_null(column('passthrough'), False).to_numpy(zero_copy_only=False)
  result = PartResult(written=int(keep.sum()), bytes=int(sizes[keep].sum()),
                      passthrough=int(passthrough[keep].sum()))
  lone = np.flatnonzero(pc.equal(kinds, PREVIOUS).to_numpy(zero_copy_only=False)
                        & ~repeated)
  del kinds
  if lone.size:
    kept = _kept_sources(column('source_key').take(lone), keep_previous)
    keep[lone[kept]] = True
    result.kept_from_previous += int(kept.sum())
    result.stale.extend(paths.take(lone[~kept]).to_pylist())
  del paths
  sampled_as: Dict[int, Tuple[str, bytes]] = {}
  lone_or_kept = keep.copy()
  lone_or_kept[lone] = True
  entries = _entries(table, order, np.flatnonzero(~lone_or_kept))
  start = 0
  while start < len(entries):
    end = start + 1
    while end < len(entries) and entries[end].path == entries[start].path:
      end += 1
    chosen = _decide_path(entries[start:end], keep_previous, on_disk_checksum, result)
    if chosen is not None:
      kept, shown = chosen
      keep[kept.position] = True
      if shown is not None:
        sampled[kept.position] = True
        sampled_as[kept.position] = (shown.class_key, shown.line)
    start = end
  return keep, sampled_as, sampled, result


def _decide_path(found: List[Entry], keep_previous, on_disk_checksum, result: PartResult
                 ) -> Optional[Tuple[Entry, Optional[Entry]]]:
  """(the entry to write, the entry to sample or None) for one path's entries."""
  written = [e for e in found if e.kind == WRITTEN]
  previous = next((e for e in found if e.kind == PREVIOUS), None)
  if written:
    # One entry per image, its written one if it has one (a replayed bundle skips the
    # file its first attempt wrote).
    by_source: Dict[str, Entry] = {}
    claims = written + [e for e in found if e.kind == SKIPPED]
    for e in sorted(claims, key=lambda e: (e.kind != WRITTEN, e.source_key, e.line)):
      by_source.setdefault(e.source_key, e)
    if len(by_source) == 1:
      only = next(iter(by_source.values()))
      _count_written(result, only)
      return only, only
    rows = [(e, e.row()) for e in by_source.values()]
    digests = {}  # the file's checksum, once per algorithm the rows use

    def matches(row):
      algorithm, value = row_checksum(row) or (None, None)
      if algorithm is None:
        return False
      if algorithm not in digests:
        digests[algorithm] = on_disk_checksum(found[0].path, algorithm)
      return digests[algorithm] == value
    kept = next(((e, r) for e, r in rows if e.kind == WRITTEN and matches(r)), None)
    others = [(e, r) for e, r in rows if kept is None or e is not kept[0]]
    result.collisions.append(Collision(
        found[0].path, kept[1] if kept else None, [r for _, r in others],
        sum(e.kind == SKIPPED for e, _ in others)))
    if kept is None:
      return None
    _count_written(result, kept[0])
    return kept[0], kept[0]
  skipped = next((e for e in found if e.kind == SKIPPED), None)
  if skipped is not None:
    result.skipped += 1
    # The previous row says how the file was made; one rebuilt from the file alone
    # (`rebuilt_row`, no source) or from its shard (`rebuilt_sample_row`, no encoder)
    # knows less than the row made again from the record.
    from_record = previous is not None and _made_from_record(previous)
    return (previous if from_record else skipped), skipped
  if keep_previous(_source_of(previous.source_key)):
    result.kept_from_previous += 1
    return previous, None
  result.stale.append(previous.path)
  return None


def _made_from_record(entry: Entry) -> bool:
  """Whether a previous row was made from its record, not rebuilt: every row a run
  makes names its encoder (`manifest_row`), a rebuilt one none."""
  return (not entry.source_key.startswith('None\x01')
          and entry.row().get('encoder') is not None)


def _source_of(source_key: str) -> str:
  return source_key.partition('\x01')[0]


def _kept_sources(source_keys: pa.ChunkedArray, keep_previous: Callable[[str], bool]
                  ) -> np.ndarray:
  """Which of the previous rows with these source keys `keep_previous` keeps, asked once
  per source file."""
  sources = pc.list_element(pc.split_pattern(source_keys, '\x01', max_splits=1), 0)
  kept = [s for s in pc.unique(sources).to_pylist() if keep_previous(s)]
  return pc.is_in(sources, value_set=pa.array(kept, pa.string())).to_numpy(
      zero_copy_only=False)


def _count_written(result: PartResult, e: Entry) -> None:
  result.written += 1
  result.bytes += e.bytes
  result.passthrough += e.passthrough


def write_part(part: Part, runs: Sequence[sorted_runs.Run], config: export_config.ExportConfig,
               on_collision: Callable[[errors.Failure], None],
               slice_rows: int = SLICE_ROWS,
               on_paths: Optional[Callable[[List[str]], None]] = None) -> dict:
  """Merges the runs' entries in `part`'s path range into a staged manifest part.

  Removes the files of stale rows (see `decide`); each name collision's images go to
  `on_collision` as Failure rows; `on_paths`, if given, gets the part's paths, a slice
  at a time (transforms/output/portability.py). Returns the part's summary, for `commit`.

  Memory: the range is cut into slices of about `slice_rows` entries by the runs' index,
  and each slice is read, decided and written before the next is read, so a part's
  task holds one slice (with its sort and a row group in flight) and a record batch of
  each run, whatever the part's size. A path's entries all fall in one slice.
  """
  root = root_files.OutputRoot(config.output, config.read.storage_options)
  keep_previous = keeps_previous(config)
  name = part_name(part.index, part.count, config.manifest_format)
  totals, sampler = PartResult(), RowSampler()
  rows, first, last, stale, collisions, collided_skipped = 0, None, None, 0, 0, 0
  with root.open_write(f'{STAGED}/{name}') as out, \
      _PartWriter(out, config.manifest_format) as writer:
    for table in _slices(root, part, runs, slice_rows):
      order = pc.sort_indices(
          table, sort_keys=[('path', 'ascending'), ('kind', 'ascending')]).to_numpy()
      keep, sampled_as, sampled, result = decide(
          table, order=order, keep_previous=keep_previous,
          on_disk_checksum=lambda path, algorithm: _checksum_or_none(root, path,
                                                                     algorithm))
      kept = order[keep]
      writer.write(table, kept)
      if on_paths is not None and kept.size:
        on_paths(_take(table.column('path'), kept).to_pylist())
      if kept.size:
        paths = table.column('path')
        first = paths[int(kept[0])].as_py() if first is None else first
        last = paths[int(kept[-1])].as_py()
        rows += int(kept.size)
      _samples(table, order, sampled, sampled_as, sampler)
      totals.count(result)
      for path in result.stale:
        try:
          root.fs.rm_file(root.path(path))
        except (FileNotFoundError, NotADirectoryError):
          pass  # gone, or a shard's member (shards.write_index removes stale shards)
      stale += len(result.stale)
      for collision in result.collisions:
        for failure in _collision_failures(collision):
          on_collision(failure)
        collisions += len(collision.others)
        collided_skipped += collision.skipped
      del table, order, keep, sampled_as, sampled, result
  pa.default_memory_pool().release_unused()
  return {
      'name': name, 'rows': rows, 'first': first, 'last': last,
      'written': totals.written, 'skipped': totals.skipped,
      'kept_from_previous': totals.kept_from_previous, 'bytes': totals.bytes,
      'passthrough': totals.passthrough, 'stale_removed': stale,
      'collisions': collisions, 'collided_skipped': collided_skipped,
      'samples': sampler.buckets(),
  }


def _slices(root: root_files.OutputRoot, part: Part, runs: Sequence[sorted_runs.Run],
            slice_rows: int) -> Iterator[pa.Table]:
  """The entries of `runs` in `part`'s range, as tables of consecutive path ranges of
  about `slice_rows` entries each, in path order (empty ones left out)."""
  readers = [sorted_runs.RangeReader(root, run, part.lo, part.hi) for run in runs]
  try:
    for hi in [*sorted_runs.split_points(runs, slice_rows, part.lo, part.hi), None]:
      batches = [batch for reader in readers for batch in reader.until(hi)]
      if batches:
        yield pa.Table.from_batches(batches).combine_chunks()
  finally:
    for reader in readers:
      reader.close()


class _PartWriter:
  """A staged part's file, written slice by slice: the entries at `kept` of each, in
  that order; JSONL as their lines, Parquet as PARQUET_SCHEMA row groups of
  ROW_GROUP_ROWS rows (the last one shorter), whatever the slices' sizes."""

  def __init__(self, out, output_format: str):
    self._out = out
    # Page checksums: a part garbled in place fails to read, and is rebuilt (see
    # `read_previous`), rather than read as other rows.
    self._parquet = (pq.ParquetWriter(out, PARQUET_SCHEMA, compression='zstd',
                                      use_dictionary=_DICTIONARY_COLUMNS,
                                      write_page_checksum=True)
                     if output_format == 'parquet' else None)
    self._pending: List[pa.Table] = []  # Parquet rows not yet in a row group
    self._groups = 0

  def __enter__(self) -> '_PartWriter':
    return self

  def __exit__(self, kind, value, traceback) -> None:
    if self._parquet is None:
      return
    if kind is None:
      if self._pending or not self._groups:
        self._parquet.write_table(pa.concat_tables(self._pending) if self._pending
                                  else PARQUET_SCHEMA.empty_table())
    self._parquet.close()

  def write(self, table: pa.Table, kept: np.ndarray) -> None:
    if self._parquet is None:
      _write_lines(self._out, table.column('line'), kept)
      return
    columns = [table.column(name) for name in PARQUET_SCHEMA.names]
    for start in range(0, kept.size, ROW_GROUP_ROWS):
      block = kept[start:start + ROW_GROUP_ROWS]
      self._pending.append(pa.Table.from_arrays([_take(c, block) for c in columns],
                                                schema=PARQUET_SCHEMA))
      held = pa.concat_tables(self._pending)
      if held.num_rows >= ROW_GROUP_ROWS:
        self._parquet.write_table(held.slice(0, ROW_GROUP_ROWS))
        self._groups += 1
        rest = held.slice(ROW_GROUP_ROWS)
        self._pending = [rest] if rest.num_rows else []


def _write_lines(out, lines: pa.ChunkedArray, kept: np.ndarray) -> None:
  """The JSON lines at `kept`, in that order, ROW_GROUP_ROWS at a time, each block
  copied from Arrow's buffers with no Python object per line."""
  for start in range(0, kept.size, ROW_GROUP_ROWS):
    taken = _take(lines, kept[start:start + ROW_GROUP_ROWS])
    _, offsets, data = taken.buffers()
    bounds = np.frombuffer(offsets, dtype=np.int32, count=len(taken) + 1,
                           offset=taken.offset * 4)
    out.write(memoryview(data)[int(bounds[0]):int(bounds[-1])])


def _take(column: pa.ChunkedArray, indices: np.ndarray) -> pa.Array:
  """`column.take(indices)`, copying only the rows taken. Arrow's own take on a chunked
  column first joins every chunk (a part's whole column, for each block); here each
  chunk is first cut to the span of its rows that `indices` names."""
  if column.num_chunks == 1:
    return column.chunk(0).take(indices)
  starts = np.cumsum([0] + [len(chunk) for chunk in column.chunks])
  chunk_of = np.searchsorted(starts, indices, side='right') - 1
  pieces, remapped, offset = [], np.empty_like(indices), 0
  for c in np.unique(chunk_of).tolist():
    mine = chunk_of == c
    local = indices[mine] - starts[c]
    low, high = int(local.min()), int(local.max()) + 1
    pieces.append(column.chunk(c).slice(low, high - low))
    remapped[mine] = local - low + offset
    offset += high - low
  if not pieces:
    return pa.array([], type=column.type)
  return pa.concat_arrays(pieces).take(remapped)


def lines_to_table(block: bytes) -> pa.Table:
  """JSON lines as a PARQUET_SCHEMA table: `id` and `label` made text, lines that do
  not hold a row of that schema left out."""
  if not block:
    return PARQUET_SCHEMA.empty_table()
  try:
    return _parsed(block)
  except pa.ArrowInvalid:  # an id or label not text yet, or a line that is no row
    pass
  tables = []
  for line in block.splitlines():
    try:
      row = orjson.loads(line)
      tables.append(_parsed(manifest_line(_with_text_fields(row))))
    except (ValueError, TypeError, AttributeError, pa.ArrowInvalid):
      continue
  return pa.concat_tables(tables) if tables else PARQUET_SCHEMA.empty_table()


def _parsed(block: bytes) -> pa.Table:
  return pa_json.read_json(
      io.BytesIO(block),
      read_options=pa_json.ReadOptions(use_threads=False, block_size=1 << 20),
      parse_options=pa_json.ParseOptions(explicit_schema=PARQUET_SCHEMA,
                                         unexpected_field_behavior='ignore'))


def _line_at(table: pa.Table, index: int) -> bytes:
  """The JSON line of the entry at `index`."""
  if 'line' in table.column_names:
    return table.column('line')[index].as_py()
  return manifest_line(_present_checksums(
      table.slice(index, 1).select(PARQUET_SCHEMA.names).to_pylist()[0]))


def _samples(table: pa.Table, order: np.ndarray, sampled: np.ndarray,
             sampled_as: Dict[int, Tuple[str, bytes]],
             sampler: Optional['RowSampler'] = None) -> List[Tuple[str, List[str]]]:
  """`sampler`'s buckets once it is fed the rows of `table` (in path order, after the
  rows it was fed before).

  Only the rows the sampler takes are fed to it, found by column: classes numbered in
  order of first appearance (Arrow's dictionary encoding), as many first rows of each
  as the sampler has room for, new classes while it takes more."""
  sampler = sampler or RowSampler()
  positions = np.flatnonzero(sampled)
  classes = table.column('class_key').take(order[positions])
  if sampled_as:  # a few rows show another entry's class (see `decide`)
    values = classes.to_pylist()
    for i, position in enumerate(positions.tolist()):
      if position in sampled_as:
        values[i] = sampled_as[position][0]
    classes = pa.chunked_array([pa.array(values, pa.string())])
  encoded = pc.dictionary_encode(classes.combine_chunks())
  codes = encoded.indices.to_numpy(zero_copy_only=False)
  wanted = [np.flatnonzero(codes == code)[:room]
            for code, room in enumerate(sampler.room(encoded.dictionary.to_pylist()))
            if room]
  taken = np.sort(np.concatenate(wanted or [[]])).astype(np.int64)
  for i in taken.tolist():
    position = int(positions[i])
    shown = sampled_as.get(position)
    line = shown[1] if shown is not None else _line_at(table, int(order[position]))
    sampler.add(encoded.dictionary[codes[i]].as_py(), line.decode('utf-8'))
  return sampler.buckets()


def keeps_previous(config: export_config.ExportConfig) -> Callable[[str], bool]:
  """Whether a row only the previous manifest has, made from the given source file,
  stays (its file kept) or goes (removed).

  The one owner of that decision: --overwrite removes them all; --incremental removes
  those of the shards it processed again (they no longer make that image), and so does
  a plain --pack run of the files it read (each packed anew, whole, so a row of one
  that this run did not write again is of a stale shard); every other run keeps them,
  so the manifest goes on listing every image file in the root.
  """
  if config.overwrite:
    return lambda source: False
  if config.incremental:
    processed = {url for url, _ in config.processed}
    return lambda source: source not in processed
  if config.packed_sources:  # --pack: a file read again was packed anew, whole
    packed = set(config.packed_sources)
    return lambda source: source not in packed
  return lambda source: True


def _checksum_or_none(root: root_files.OutputRoot, path: str, algorithm: str
                      ) -> Optional[str]:
  try:
    return checksums.digest(root.read(path), algorithm)
  except OSError:
    return None


def _collision_failures(collision: Collision) -> List[errors.Failure]:
  rows = ([collision.kept] if collision.kept else []) + collision.others
  others = ', '.join(f'{r["source"]} record {r["index"]}' for r in rows[:10])
  if len(rows) > 10:
    others += f' and {len(rows) - 10} more'
  return [errors.Failure(
      reason=errors.NAME_COLLISION, stage='write', path=row['source'], index=row['index'],
      offset=row['offset'], n=row['n'],
      message=f'output name {collision.path!r} is taken by more than one image ({others}); '
      'add {id}, {index} or {n} to --name_template to tell them apart')
      for row in collision.others]


# ---------------------------------------------------------------------------------------
# Committing the parts


_SUMMED = ('written', 'skipped', 'kept_from_previous', 'bytes', 'passthrough',
           'stale_removed', 'collisions', 'collided_skipped')


def commit(parts: Iterable[dict], config: export_config.ExportConfig,
           repairs: Sequence[dict] = (), kept_files: Sequence[str] = ()) -> dict:
  """Puts the staged parts in place as the manifest and sums their summaries.

  The journal (the staged parts' list) is written first, so a run killed during the
  moves is finished by the next one (`recover`). With --overwrite, files under the root
  that the new manifest does not list are removed. `repairs`: what `read_previous`
  rebuilt of the previous manifest, for the report. `kept_files`: files no row names
  that --overwrite keeps (the shards and their index).
  """
  root = root_files.OutputRoot(config.output, config.read.storage_options)
  # One pass over the summaries, in the order they come: each leaves its index entry
  # (about 150 B), its counts and, merged, only the sample rows the report can show, so
  # the memory is one summary's, not every part's (docs/scale.md).
  entries, sampler = [], SampleMerge()
  total = dict.fromkeys(_SUMMED, 0)
  for part in parts:
    entries.append({k: part[k] for k in ('name', 'rows', 'first', 'last')})
    sampler.add_part(part['name'], part['samples'])
    for key in _SUMMED:
      total[key] += part[key]
  entries.sort(key=lambda entry: entry['name'])
  index = {'format': config.manifest_format, 'rows': sum(e['rows'] for e in entries),
           'parts': entries}
  root.write(JOURNAL, (json.dumps(index, indent=1) + '\n').encode('utf-8'))
  finish_commit(root)
  unlisted = _remove_unlisted(root, kept_files) if config.overwrite else 0
  collisions, collided_skipped = total.pop('collisions'), total.pop('collided_skipped')
  total['stale_removed'] += unlisted
  total['parts'] = len(entries)
  total['rows'] = index['rows']
  total['committed_at'] = time.time()
  total['samples'] = [json.loads(line) for line in sampler.chosen()]
  total['repaired'] = sorted(repairs, key=lambda r: r['part'])
  total['collisions'] = collisions
  # The workers counted each colliding image as written (or skipped); these take those
  # counts back, as failures (the metrics' corrections).
  total['count_corrections'] = {
      f'failed_{errors.NAME_COLLISION}': collisions,
      'images_written': collided_skipped - collisions,
      'images_skipped': -collided_skipped}
  return total


def finish_commit(root: root_files.OutputRoot) -> None:
  """Moves the journal's staged parts into `_manifest/`, removes every other part and
  an earlier version's `_manifest.jsonl`, writes `_parts.json`, then the journal goes.
  Safe to run again after being stopped at any point.

  Each folder is listed once; on an object store the parts are copied MOVE_BATCH at a
  time and removed in one batched request, not moved one after another (gcsfs's move
  first tries an API that flat buckets refuse, and retries it: 33 s a part on the GCS
  emulator; docs/scale.md)."""
  index = json.loads(root.read(JOURNAL))
  listed = {part['name'] for part in index['parts']}
  staged = sorted(listed & _names_in(root, STAGED))
  _move(root, [root.path(f'{STAGED}/{name}') for name in staged],
        [root.path(f'{naming.MANIFEST}/{name}') for name in staged])
  _remove(root, [root.path(f'{naming.MANIFEST}/{name}')
                 for name in sorted(_names_in(root, naming.MANIFEST))
                 if _PART_NAME.match(name) and name not in listed])
  if root.exists(naming.LEGACY_MANIFEST):
    root.fs.rm_file(root.path(naming.LEGACY_MANIFEST))
  root.write(PARTS_INDEX, (json.dumps(index, indent=1) + '\n').encode('utf-8'))
  root.remove_tree(STAGED)


# Parts copied at once on an object store. A bounded number: a store slows down, or
# refuses requests, past some concurrency (the GCS emulator copies 1 object in 2 ms,
# 4 at once in 3 ms each, 16 at once in 26 ms each, fsspec's default 128+ in 460 ms).
MOVE_BATCH = 4


def _names_in(root: root_files.OutputRoot, folder: str) -> set:
  """The names of the files directly in `folder` (none if it does not exist)."""
  try:
    found = root.fs.ls(root.path(folder), detail=False)
  except FileNotFoundError:
    return set()
  return {path.rstrip('/').rpartition('/')[2] for path in found}


def _move(root: root_files.OutputRoot, sources: List[str], targets: List[str]) -> None:
  if not sources:
    return
  if root.local:
    for source, target in zip(sources, targets):
      os.replace(source, target)
  else:  # server-side copies, MOVE_BATCH at a time, then one batched removal
    root.fs.copy(sources, targets, batch_size=MOVE_BATCH)
    root.fs.rm(sources)


def _remove(root: root_files.OutputRoot, paths: List[str]) -> None:
  if not paths:
    return
  if root.local:
    for path in paths:
      os.remove(path)
  else:
    root.fs.rm(paths)


def recover(root: root_files.OutputRoot) -> None:
  """Finishes a commit a killed run left half done; drops parts staged but never
  committed (a run killed before its commit)."""
  if root.exists(JOURNAL):
    finish_commit(root)
  elif root.exists(STAGED):
    root.remove_tree(STAGED)


def _remove_unlisted(root: root_files.OutputRoot, kept_files: Sequence[str] = ()) -> int:
  """--overwrite: removes every file under the root that the new manifest does not list
  (a killed run's images, say), except unrecord's own files; returns how many.

  Holds the root's listing in memory, one path per file (docs/scale.md).
  """
  prefix = root.path('')
  found = {p[len(prefix):] for p in root.fs.find(root.root) if p.startswith(prefix)}
  found.difference_update(listed_paths(root))
  found.difference_update(kept_files)
  removed = 0
  for path in sorted(found):
    if path.split('/', 1)[0].startswith('_') or root_files.is_temp_name(path):
      continue
    try:
      root.fs.rm_file(root.path(path))
      removed += 1
    except FileNotFoundError:
      pass
  return removed


# ---------------------------------------------------------------------------------------
# Rows: one per image, and the few the report shows


def manifest_row(image: decode.DecodedImage, name: str, rendered: render.Rendered,
                 config: export_config.ExportConfig) -> dict:
  """The manifest row for one written image."""
  features = image.features
  label_key, id_key = config.render.label_key, config.render.id_key
  label = features.get(label_key) if label_key else None
  names = config.render.label_names
  algorithm = config.checksum
  digest = checksums.digest(rendered.data, algorithm)
  row = {  # keys in sorted order: `manifest_line(row, in_key_order=True)` keeps it
      'bytes': len(rendered.data),
      'dtype_in': image.source_dtype,
      'dtype_out': rendered.dtype,
      'encoder': rendered.encoder,
      'format': config.render.encode.format,
      'id': features.get(id_key) if id_key else None,
      'index': image.ref.index,
      'key': image.key,
      'label': label,
      'label_name': naming.label_name(label, names),
      'n': image.n,
      'normalization': list(rendered.steps),
      'offset': image.ref.offset,
      'passthrough': rendered.passthrough,
      'path': name,
      'sha256': digest,  # or the column of --checksum's algorithm, below
      'shape_in': list(image.pixels.shape if image.pixels is not None
                       else image.stored_shape),
      'shape_out': list(rendered.shape),
      'source': image.ref.path,
      'value_range': list(rendered.value_range) if rendered.value_range else None,
  }
  if algorithm != 'sha256':  # its column instead, the keys still sorted
    del row['sha256']
    row[algorithm] = digest
    row = dict(sorted(row.items()))
  return _with_text_fields(row) if config.manifest_format == 'parquet' else row


def row_checksum(row: dict) -> Optional[Tuple[str, str]]:
  """(algorithm, lowercase hex) of the checksum a manifest row holds for its file, or
  None. The one reader of a row's checksum: the row names its algorithm by the column it
  fills (`manifest_row`), so one manifest may hold rows of several."""
  for algorithm in CHECKSUM_FIELDS:
    value = row.get(algorithm)
    if isinstance(value, str) and value:
      return algorithm, value.lower()
  return None


def _present_checksums(row: dict) -> dict:
  """A Parquet row as its JSONL row: without the checksum columns it leaves null."""
  for algorithm in CHECKSUM_FIELDS:
    if algorithm in row and row[algorithm] is None:
      del row[algorithm]
  return row


def _with_text_fields(row: dict) -> dict:
  """`row` with `id` and `label` as text, as PARQUET_SCHEMA holds them."""
  for key in TEXT_FIELDS:
    value = row.get(key)
    if value is not None and not isinstance(value, str):
      row[key] = _text(value)
  return row


def _text(value) -> str:
  if isinstance(value, bytes):
    return value.decode('utf-8', 'replace')
  if isinstance(value, (list, tuple)):
    return ','.join(_text(v) for v in value)
  return str(value)


def _whole_image(root: root_files.OutputRoot, path: str, config: export_config.ExportConfig
                 ) -> Optional[Tuple[bytes, Optional[Tuple[int, ...]], Optional[str]]]:
  """(bytes, shape, dtype) of an image file under the root; None when it is gone or is
  not a whole image (empty, cut short, damaged)."""
  try:
    data = root.read(path)
  except FileNotFoundError:
    return None
  try:
    shape, dtype = image_formats.check_encoded(data, None, config.image.max_pixels)
  except errors.UnrecordError:
    return None
  return data, shape, dtype


def existing_row(image: decode.DecodedImage, name: str, root: root_files.OutputRoot,
                 config: export_config.ExportConfig) -> Optional[dict]:
  """The manifest row for a finished image --skip_existing leaves in place, from the file
  itself; None when there is no such file, or it is not a whole image (empty, cut short,
  damaged): that one is written again.

  `write_part` prefers the previous run's row for the same path when there is one.
  """
  found = _whole_image(root, name, config)
  if found is None:
    return None
  data, shape, dtype = found
  rendered = render.Rendered(data, tuple(shape or ()), dtype, ('existing',), 'existing',
                             False, None)
  row = manifest_row(image, name, rendered, config)
  row['shape_out'] = list(shape) if shape else None
  return row


_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY
_AS_BUILT = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY


def manifest_line(row: dict, *, in_key_order: bool = False) -> bytes:
  """One manifest JSON line, UTF-8, keys sorted (equal rows give equal lines), ending
  in a newline; not-a-number floats are null, as JSON has no NaN.

  `in_key_order`: the caller built `row` with its keys already sorted and no dict among
  its values, as `manifest_row` does, so the keys are written as they come.
  """
  # A compact copy: orjson's own bytes object keeps its ~8 KB working buffer for as long
  # as it lives, and workers hold thousands of lines (docs/benchmarks.md).
  return bytes(memoryview(orjson.dumps(row, option=_AS_BUILT if in_key_order else _SORTED)))


SAMPLES_PER_CLASS = 8
MAX_SAMPLES = 48


class RowSampler:
  """Manifest rows to show in the report: the first few of each class where labels
  exist, else the first. Fed (class, row) in path order; holds only what it may show.

  Only the first `limit` classes can be shown, so rows of later classes are never kept.
  Samplers of consecutive path ranges combine by feeding their `buckets()`, in range
  order, to another: the result is the sampler of the whole range.
  """

  def __init__(self, per_class: int = SAMPLES_PER_CLASS, limit: int = MAX_SAMPLES):
    self.per_class = per_class
    self.limit = limit
    self._by_class = collections.OrderedDict()

  def wants(self, class_key: Hashable) -> bool:
    return self.room([class_key])[0] > 0

  def add(self, class_key: Hashable, row) -> None:
    if not self.wants(class_key):
      return
    self._by_class.setdefault(class_key, []).append(row)

  def room(self, class_keys: Sequence[Hashable]) -> List[int]:
    """How many more rows of each of `class_keys` (distinct, in order of first
    appearance) it would take, fed them in that order."""
    new_classes = self.limit - len(self._by_class)
    found = []
    for class_key in class_keys:
      bucket = self._by_class.get(class_key)
      if bucket is not None:
        found.append(self.per_class - len(bucket))
      else:
        found.append(self.per_class if new_classes > 0 else 0)
        new_classes -= 1
    return found

  def buckets(self) -> list:
    return [(class_key, list(rows)) for class_key, rows in self._by_class.items()]

  def chosen(self) -> list:
    return _round_robin(list(self._by_class.values()), self.limit)


def _round_robin(buckets: Sequence[Sequence], limit: int) -> list:
  """Up to `limit` rows, one of each class in turn, in class order."""
  buckets = [list(bucket) for bucket in buckets]
  chosen = []
  while len(chosen) < limit and any(buckets):
    for bucket in buckets:
      if bucket and len(chosen) < limit:
        chosen.append(bucket.pop(0))
  return chosen


class SampleMerge:
  """Every part's `RowSampler` buckets merged in any order, holding at most `limit`
  classes of `per_class` rows; `chosen()` is what one RowSampler fed all the parts in
  name (path) order would choose.

  A row's place is (part name, its class's place in the part, its place in the class).
  Each class keeps its `per_class` first rows, and past `limit` classes only the `limit`
  seen first are kept. With at most `limit` classes nothing is ever cut, so every class
  holds its first rows. With more, a cut may drop later rows of a class whose first row
  comes in a part merged after: but then the round robin shows only the first row of
  each of the first `limit` classes, and those survive. Once such a class's first row is
  in, fewer than `limit` classes can be ahead of it, at that cut or any later one.
  """

  def __init__(self, per_class: int = SAMPLES_PER_CLASS, limit: int = MAX_SAMPLES):
    self.per_class = per_class
    self.limit = limit
    self._by_class: Dict[Hashable, list] = {}

  def add_part(self, name: str, buckets: Sequence[Tuple[Hashable, Sequence]]) -> None:
    for place, (class_key, rows) in enumerate(buckets):
      kept = self._by_class.setdefault(class_key, [])
      kept.extend(((name, place, i), row) for i, row in enumerate(rows))
      kept.sort(key=lambda entry: entry[0])
      del kept[self.per_class:]
    if len(self._by_class) > self.limit:
      first = sorted(self._by_class, key=lambda c: self._by_class[c][0][0])
      self._by_class = {c: self._by_class[c] for c in first[:self.limit]}

  def chosen(self) -> list:
    classes = sorted(self._by_class.values(), key=lambda kept: kept[0][0])
    return _round_robin([[row for _, row in kept] for kept in classes], self.limit)
