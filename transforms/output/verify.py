"""`unrecord verify ROOT`: whether an output root is whole, as its manifest says it is.

Checks, with no pipeline: `_manifest/_parts.json` and every part it lists (present,
readable, holding the rows it says); each row's file (present, its size, its checksum);
the files under the root that no row names; and `_SUCCESS` against `_report.json`.
Every problem is a `Problem` of one of KINDS, naming the file.

Shards (`--pack tar|parquet`): a row naming a `shard` is checked inside it, one read of
each shard: its member is there (a tar's member of that name whose data starts at the
row's `member_offset`, a Parquet shard's row `shard_row`), of its size and checksum; and
each shard against its `shardindex.json` entry (its samples and bytes). A shard that is
cut or garbled, a missing one and a member that is not where its row says are named.

Checksums: sha256 and blake3 rows are compared by reading the file; crc32c rows
against the store's own crc32c where it keeps one (GCS for every object, from the
listing; S3 for objects uploaded with one, from a HEAD each), so no byte of the file is
read; elsewhere the file is read.

Parallelism: verify is not a Beam job, so the "no thread pools in DoFns" rule does not
apply; its reads and HEADs are I/O that waits on the disk or the store, and hashlib,
blake3 and google-crc32c hash without holding the GIL, so a bounded pool of threads
(`jobs`) keeps the disk or the store busy. The rows are taken in batches, so a root of
10^5 small files is not 10^5 futures.

Memory: the rows' paths, sizes and checksums and the root's listing are held, about 200
bytes a file (as `--overwrite`'s removal holds the listing; docs/scale.md).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import os
import sys
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from transforms.output import checksums
from transforms.output import manifest
from transforms.output import naming
from transforms.output import root_claim
from transforms.output import root_files
from transforms.output import shard_contents
from transforms.output import shards as shards_lib

# What can be wrong, each with the words the summary uses.
KINDS = {
    'missing_parts_index': f'{manifest.PARTS_INDEX} is missing',
    'damaged_parts_index': f'{manifest.PARTS_INDEX} cannot be read',
    'missing_part': 'a manifest part _parts.json lists is missing',
    'damaged_part': 'a manifest part is damaged',
    'unlisted_part': 'a manifest part _parts.json does not list',
    'missing_file': 'a file a row names is missing',
    'wrong_size': 'a file is not the size its row says',
    'wrong_checksum': 'a file does not have the checksum its row says',
    'no_checksum': 'a row holds no checksum',
    'unreadable_file': 'a file cannot be read',
    'unlisted_file': 'a file no row names',
    'no_success': '_SUCCESS is absent',
    'success_without_report': '_SUCCESS is present but _report.json is absent',
    'success_but_run_failed': '_SUCCESS is present but _report.json says the run failed',
    'damaged_report': '_report.json cannot be read',
    'report_mismatch': '_report.json does not match the manifest',
    'missing_shard_index': f'{shards_lib.INDEX} is missing, though rows name shards',
    'damaged_shard_index': f'{shards_lib.INDEX} cannot be read',
    'missing_shard': 'a shard a row or the shard index names is missing',
    'damaged_shard': 'a shard is not a whole tar or Parquet file',
    'missing_member': 'a shard does not hold the member its row names where it says',
    'index_mismatch': f'a shard does not hold what {shards_lib.INDEX} says',
}
# Rows a pool task checks at once.
BATCH_ROWS = 64
# Checksum columns read from a Parquet part, beside the path and size.
_COLUMNS = ('path', 'bytes') + manifest.CHECKSUM_FIELDS + (
    'shard', 'member', 'member_offset', 'shard_row')


class NotARoot(ValueError):
  """The URL is not an unrecord output root (exit 2)."""


class Unreachable(Exception):
  """The storage cannot be reached or read (exit 3); the message says what to check."""


@dataclasses.dataclass(frozen=True)
class Problem:
  kind: str
  path: str  # relative to the root
  detail: str

  def line(self) -> str:
    return f'{self.kind}: {self.path}: {self.detail}'

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


class Row(NamedTuple):
  """What verify needs of a manifest row (a tuple: a root holds 10^5 or more)."""
  path: str
  size: Optional[int]
  checksum: Optional[Tuple[str, str]]  # (algorithm, hex), manifest.row_checksum
  shard: Optional[str] = None  # with --pack: the shard holding the image,
  member: Optional[str] = None  # its member's name,
  where: Optional[int] = None  # and its data's offset (tar) or row (Parquet)


@dataclasses.dataclass
class Summary:
  root: str
  parts: int = 0
  rows: int = 0
  files_checked: int = 0
  bytes_checked: int = 0
  shards_checked: int = 0
  members_checked: int = 0
  checksums: Dict[str, int] = dataclasses.field(default_factory=dict)
  # crc32c rows compared against the store's own checksum, no byte read.
  from_store: int = 0
  # Files read to hash them.
  files_read: int = 0
  success_marker: bool = False
  problems: List[Problem] = dataclasses.field(default_factory=list)
  seconds: float = 0.0
  notes: List[str] = dataclasses.field(default_factory=list)

  @property
  def whole(self) -> bool:
    return not self.problems

  def counts(self) -> Dict[str, int]:
    found: Dict[str, int] = {}
    for problem in self.problems:
      found[problem.kind] = found.get(problem.kind, 0) + 1
    return dict(sorted(found.items()))

  def to_json(self) -> dict:
    return {
        'root': self.root, 'whole': self.whole, 'parts': self.parts, 'rows': self.rows,
        'files_checked': self.files_checked, 'bytes_checked': self.bytes_checked,
        'shards_checked': self.shards_checked, 'members_checked': self.members_checked,
        'checksums': dict(sorted(self.checksums.items())), 'from_store': self.from_store,
        'files_read': self.files_read, 'success_marker': self.success_marker,
        'problem_counts': self.counts(),
        'problems': [p.to_json() for p in self.problems],
        'seconds': round(self.seconds, 3),
        'files_per_second': round(self.files_checked / self.seconds, 1)
        if self.seconds > 0 else None,
        'notes': list(self.notes),
    }

  def text(self, limit: int = 20) -> str:
    """The summary a person reads: a verdict line, the counts, the first problems."""
    rate = (f', {self.files_checked / self.seconds:,.0f} files/s'
            if self.seconds > 0 and self.files_checked else '')
    algorithms = ', '.join(f'{n:,} {a}' for a, n in sorted(self.checksums.items()))
    what = ([f'{self.files_checked:,} files']
            if self.files_checked or not self.shards_checked else [])
    if self.shards_checked:
      what.append(f'{self.members_checked:,} members of {self.shards_checked:,} shards')
    head = (f'{" and ".join(what)} ({_size(self.bytes_checked)}) of {self.rows:,} '
            f'rows in {self.parts:,} parts checked in {self.seconds:.1f} s{rate}'
            + (f'; checksums: {algorithms}' if algorithms else '')
            + (f' ({self.from_store:,} from the store, no byte read)'
               if self.from_store else ''))
    lines = [f'unrecord verify: {"OK" if self.whole else "NOT WHOLE"}: {self.root}',
             f'  {head}']
    lines += [f'  note: {note}' for note in self.notes]
    if self.problems:
      lines.append('  problems: ' + ', '.join(f'{n:,} {kind}'
                                              for kind, n in self.counts().items()))
      lines += [f'  {p.line()}' for p in self.problems[:limit]]
      if len(self.problems) > limit:
        lines.append(f'  ... and {len(self.problems) - limit:,} more (--json lists '
                     'every one)')
    return '\n'.join(lines)


def _size(n: int) -> str:
  for unit in ('B', 'KB', 'MB', 'GB'):
    if n < 1000 or unit == 'GB':
      return f'{n:,.0f} {unit}' if unit == 'B' else f'{n:,.1f} {unit}'
    n /= 1000
  return f'{n} TB'


class Progress:
  """A progress line on `stream`: one line rewritten on a terminal (at most every
  `refresh` s), else a line every `interval` s; nothing when `quiet`."""

  def __init__(self, total: int, stream=None, quiet: bool = False,
               interval: float = 10.0, refresh: float = 0.2):
    self._stream = stream or sys.stderr
    self._live = bool(getattr(self._stream, 'isatty', lambda: False)())
    self._quiet, self._interval, self._refresh = quiet, interval, refresh
    self.total, self.done = total, 0
    self._started = self._shown = time.monotonic()
    self.lines = 0

  def add(self, n: int) -> None:
    self.done += n
    now = time.monotonic()
    if self._quiet or now - self._shown < (self._refresh if self._live else self._interval):
      return
    self._shown = now
    self._print(end='\r' if self._live else '\n')

  def _print(self, end: str) -> None:
    seconds = time.monotonic() - self._started
    rate = self.done / seconds if seconds > 0 else 0.0
    fraction = self.done / self.total if self.total else 1.0
    self._stream.write(f'unrecord verify: {self.done:,}/{self.total:,} files '
                       f'({fraction:.0%}) {rate:,.0f} files/s'
                       + ('\033[K' if self._live else '') + end)
    self._stream.flush()
    self.lines += 1

  def close(self) -> None:
    if self._live and self.lines:
      self._stream.write('\r\033[K')
      self._stream.flush()


# ---------------------------------------------------------------------------------------
# The root, its manifest, its listing


def open_root(url: str, storage_options=None) -> root_files.OutputRoot:
  """The root at `url`; NotARoot when it holds no unrecord output, Unreachable when its
  storage cannot be asked."""
  try:
    root = root_files.OutputRoot(url, storage_options)
  except (ValueError, ImportError) as e:  # an unknown protocol, a bad option
    raise NotARoot(f'{url}: {e}') from None
  except Exception as e:  # pylint: disable=broad-except
    raise _unreachable(url, e) from None
  own = (naming.MANIFEST, naming.LEGACY_MANIFEST, naming.REPORT, naming.SUCCESS,
         root_claim.IDENTITY)
  try:
    if root.local and not os.path.isdir(root.root):
      raise NotARoot(f'{url} is not a folder' if os.path.exists(root.root)
                     else f'{url} does not exist')
    if not any(root.exists(name) for name in own):
      raise NotARoot(f'{url} is not an unrecord output root (it holds no _manifest/, '
                     '_report.json or _SUCCESS)')
  except NotARoot:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise _unreachable(url, e) from None
  return root


def _unreachable(url: str, error: BaseException) -> Unreachable:
  cause = f'{type(error).__name__}: {error}'.strip().splitlines()[0][:300]
  return Unreachable(f'cannot read {url}: {cause}; check that the storage is reachable '
                     'and that its credentials (--storage_options, the environment) '
                     'allow reading')


def _is_fault(error: BaseException) -> bool:
  """Whether a read failed because of the storage (exit 3), not because of the file."""
  return not isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError,
                                NotADirectoryError, ValueError, EOFError))


def read_parts(root: root_files.OutputRoot, summary: Summary) -> List[Row]:
  """Every row of the root's manifest; the parts' problems go into `summary`."""
  try:
    index_text = root.read(manifest.PARTS_INDEX)
  except FileNotFoundError:
    if root.exists(naming.LEGACY_MANIFEST):  # an earlier version's single file
      summary.parts = 1
      return _part_rows(root, naming.LEGACY_MANIFEST, None, summary)
    summary.problems.append(Problem(
        'missing_parts_index', manifest.PARTS_INDEX,
        'the manifest is missing; re-run the export with --skip_existing to write it'))
    return []
  try:
    index = json.loads(index_text)
    parts = [(part['name'], int(part['rows'])) for part in index['parts']]
  except (ValueError, KeyError, TypeError) as e:
    summary.problems.append(Problem('damaged_parts_index', manifest.PARTS_INDEX,
                                    f'not a parts list ({type(e).__name__}: {e})'))
    return []
  summary.parts = len(parts)
  rows: List[Row] = []
  for name, count in parts:
    rows += _part_rows(root, f'{naming.MANIFEST}/{name}', count, summary)
  listed = {name for name, _ in parts}
  try:
    present = root.fs.ls(root.path(naming.MANIFEST), detail=False)
  except FileNotFoundError:
    present = []
  for path in sorted(present):
    name = path.rstrip('/').rpartition('/')[2]
    if manifest._PART_NAME.match(name) and name not in listed:  # pylint: disable=protected-access
      summary.problems.append(Problem('unlisted_part', f'{naming.MANIFEST}/{name}',
                                      '_parts.json does not list it'))
  return rows


def _part_rows(root: root_files.OutputRoot, name: str, count: Optional[int],
               summary: Summary) -> List[Row]:
  """The rows of one part; a part that is missing, cannot be parsed or holds other
  than `count` rows is a problem (its rows read so far are still checked)."""
  rows: List[Row] = []
  try:
    if name.endswith('.parquet'):
      bad = _parquet_rows(root, name, rows)
    else:
      bad = _jsonl_rows(root, name, rows)
  except FileNotFoundError:
    summary.problems.append(Problem('missing_part', name, '_parts.json lists it, but it '
                                    'is not there'))
    return []
  except Exception as e:  # pylint: disable=broad-except
    if _is_fault(e) and not _is_damage(e):
      raise _unreachable(root.url_of(name), e) from None
    summary.problems.append(Problem('damaged_part', name, f'cannot be read '
                                    f'({type(e).__name__}: {str(e)[:200]})'))
    return rows
  if bad:
    summary.problems.append(Problem('damaged_part', name,
                                    f'{bad} lines are not manifest rows'))
  elif count is not None and len(rows) != count:
    summary.problems.append(Problem('damaged_part', name, f'holds {len(rows)} rows; '
                                    f'_parts.json says {count}'))
  return rows


def _is_damage(error: BaseException) -> bool:
  """Errors of a file's bytes (a cut or garbled Parquet), not of the storage."""
  return isinstance(error, (pa.ArrowException, ValueError, EOFError))


_JSON_SCHEMA = pa.schema([('path', pa.string()), ('bytes', pa.int64())] +
                         [(name, pa.string()) for name in manifest.CHECKSUM_FIELDS] +
                         [('shard', pa.string()), ('member', pa.string()),
                          ('member_offset', pa.int64()), ('shard_row', pa.int64())])


def _jsonl_rows(root: root_files.OutputRoot, name: str, rows: List[Row]) -> int:
  """Appends the part's rows to `rows`; returns how many lines hold no row. A whole
  part is parsed by Arrow, only the columns verify reads (a part is at most
  --manifest_part_rows rows); one that does not parse so, line by line, to count them."""
  data = root.read(name)
  if not data.strip():
    return 0
  try:
    table = pa_json.read_json(
        io.BytesIO(data), read_options=pa_json.ReadOptions(block_size=16 << 20),
        parse_options=pa_json.ParseOptions(explicit_schema=_JSON_SCHEMA,
                                           unexpected_field_behavior='ignore'))
    if table.column('path').null_count == 0:
      rows.extend(_table_rows(table))
      return 0
  except pa.ArrowInvalid:
    pass
  bad = 0
  for line in data.splitlines():
    if not line.strip():
      continue
    try:
      rows.append(_row(orjson.loads(line)))
    except (ValueError, TypeError, KeyError, AttributeError):
      bad += 1
  return bad


def _parquet_rows(root: root_files.OutputRoot, name: str, rows: List[Row]) -> int:
  bad = 0
  with root.open_read(name) as f:
    parquet = pq.ParquetFile(f)
    columns = [c for c in _COLUMNS if c in parquet.schema_arrow.names]
    for group in range(parquet.num_row_groups):
      table = parquet.read_row_group(group, columns=columns)
      whole = table.filter(pc.is_valid(table.column('path')))
      bad += table.num_rows - whole.num_rows
      rows.extend(_table_rows(whole))
  return bad


def _table_rows(table: pa.Table) -> List[Row]:
  """The Rows of a table of _COLUMNS (some checksum columns may be absent), by column."""
  paths = table.column('path').to_pylist()
  sizes = (table.column('bytes').to_pylist() if 'bytes' in table.column_names
           else [None] * len(paths))
  found: List[Optional[Tuple[str, str]]] = [None] * len(paths)
  for algorithm in reversed(manifest.CHECKSUM_FIELDS):  # the first one filled wins,
    if algorithm not in table.column_names:             # as in manifest.row_checksum
      continue
    for i, value in enumerate(table.column(algorithm).to_pylist()):
      if value:
        found[i] = (algorithm, value.lower())
  if 'shard' not in table.column_names or table.column('shard').null_count == len(paths):
    return [Row(p, s, c) for p, s, c in zip(paths, sizes, found)]
  none = [None] * len(paths)
  column = lambda name: (table.column(name).to_pylist() if name in table.column_names
                         else none)
  offsets, numbers = column('member_offset'), column('shard_row')
  wheres = [o if o is not None else r for o, r in zip(offsets, numbers)]
  return [Row(*values) for values in zip(paths, sizes, found, column('shard'),
                                         column('member'), wheres)]


def _row(row: dict) -> Row:
  path = row['path']
  if not isinstance(path, str) or not isinstance(row, dict):
    raise TypeError('not a row')
  size = row.get('bytes')
  where = row.get('member_offset')
  where = row.get('shard_row') if where is None else where
  return Row(path, size if isinstance(size, int) else None, manifest.row_checksum(row),
             row.get('shard') or None, row.get('member'),
             where if isinstance(where, int) else None)


def listing(root: root_files.OutputRoot) -> Dict[str, dict]:
  """Relative path -> the store's details (size; crc32c on GCS) of every file under the
  root, in one recursive listing."""
  prefix = root.path('')
  if root.local:  # names only: each file's size comes with its bytes (`_check`)
    return {entry.path[len(prefix):]: {}
            for entry in root_files._files_under(root.root)}  # pylint: disable=protected-access
  return {path[len(prefix):]: info
          for path, info in root.fs.find(root.root, detail=True).items()
          if path.startswith(prefix) and info.get('type') != 'directory'}


# ---------------------------------------------------------------------------------------
# Checking the rows' files


def _store_crc32c(root: root_files.OutputRoot) -> Optional[Callable[[str, dict], Optional[str]]]:
  """How to ask the store for a file's crc32c, as hex (None: it keeps none), or None
  when the store has no such thing."""
  protocols = root_files._protocols(root.fs)  # pylint: disable=protected-access
  if 'gs' in protocols or 'gcs' in protocols:
    return lambda path, info: (checksums.crc32c_hex(info['crc32c'])
                               if info.get('crc32c') else None)
  if 's3' in protocols or 's3a' in protocols:
    def head(path, info):
      bucket, key, _ = root.fs.split_path(root.path(path))
      out = root.fs.call_s3('head_object', Bucket=bucket, Key=key, ChecksumMode='ENABLED')
      value = out.get('ChecksumCRC32C')
      # A multipart upload's value is a checksum of its parts' ('...-3'): not the file's.
      return checksums.crc32c_hex(value) if value and '-' not in value else None
    return head
  return None


@dataclasses.dataclass
class Checked:
  """One row's outcome."""
  row: Row
  problem: Optional[Problem] = None
  size: int = 0
  from_store: bool = False  # the store's own crc32c answered
  read: bool = False  # the file's bytes were read


def _check(root: root_files.OutputRoot, row: Row, info: dict, store_crc32c) -> Checked:
  """The outcome of a row whose file is listed."""
  if root.local:  # one read gives the size and the checksum
    fd = os.open(root.path(row.path), os.O_RDONLY | getattr(os, 'O_CLOEXEC', 0))
    try:
      found, size = checksums.fd_digest(fd, row.checksum[0] if row.checksum
                                        else checksums.DEFAULT)
    finally:
      os.close(fd)
    return _compare(row, Checked(row, size=size, read=True), found)
  checked = Checked(row, size=info.get('size') or 0)
  if row.size is not None and info.get('size') is not None and info['size'] != row.size:
    return _compare(row, checked, None)
  if row.checksum is None:
    return _compare(row, checked, None)
  algorithm = row.checksum[0]
  found = None
  if algorithm == 'crc32c' and store_crc32c is not None:
    found = store_crc32c(row.path, info)
    checked.from_store = found is not None
  if found is None:
    checked.read = True
    with root.open_read(row.path, buffer=checksums.READ_BYTES) as f:
      found = checksums.stream_digest(f, algorithm)
  return _compare(row, checked, found)


def _compare(row: Row, checked: Checked, found: Optional[str]) -> Checked:
  """`checked` with its problem, if any: the size first, then the checksum."""
  if row.size is not None and checked.size != row.size:
    checked.problem = Problem('wrong_size', row.path,
                              f'{checked.size} bytes; its row says {row.size}')
  elif row.checksum is None:
    checked.problem = Problem('no_checksum', row.path,
                              'its row holds no sha256, crc32c or blake3')
  elif found != row.checksum[1]:
    algorithm, expected = row.checksum
    where = 'the store says' if checked.from_store else 'the file has'
    checked.problem = Problem('wrong_checksum', row.path,
                              f'{algorithm} {expected} in its row; {where} {found}')
  return checked


def _check_batch(root, batch, store_crc32c) -> List[Checked]:
  out = []
  for row, info in batch:
    try:
      checked = _check(root, row, info, store_crc32c)
    except FileNotFoundError:
      checked = Checked(row, Problem('missing_file', row.path, 'removed while verify ran'))
    except Exception as e:  # pylint: disable=broad-except
      if _is_fault(e):
        raise _unreachable(root.url_of(row.path), e) from None
      checked = Checked(row, Problem('unreadable_file', row.path,
                                     f'{type(e).__name__}: {e}'))
    out.append(checked)
  return out


# ---------------------------------------------------------------------------------------
# Shards: each row's member inside its shard, each shard against the index


@dataclasses.dataclass
class ShardChecked:
  """One shard's outcome: its rows' outcomes and the shard's own problems."""
  shard: str
  rows: List[Checked]
  problems: List[Problem]
  size: int = 0


def read_shard_index(root: root_files.OutputRoot, rows: List[Row],
                     summary: Summary) -> Dict[str, dict]:
  """url -> entry of the root's `shardindex.json`; its absence (when rows name shards)
  or damage is a problem."""
  try:
    data = root.read(shards_lib.INDEX)
  except FileNotFoundError:
    if any(row.shard for row in rows):
      summary.problems.append(Problem(
          'missing_shard_index', shards_lib.INDEX, 'the manifest names shards, but the '
          'shard index is missing; re-run the export with --skip_existing to write it'))
    return {}
  try:
    entries = json.loads(data)['shardlist']
    return {e['url']: e for e in entries if isinstance(e['url'], str)}
  except (ValueError, KeyError, TypeError) as e:
    summary.problems.append(Problem('damaged_shard_index', shards_lib.INDEX,
                                    f'not a shard index ({type(e).__name__}: {e})'))
    return {}


def _member_problem(row: Row, shard: str, detail: str) -> Checked:
  return Checked(row, Problem('missing_member', row.path, f'{shard}: {detail}'))


def _digest_member(row: Row, data: bytes, shard: str) -> Checked:
  """A member's outcome from its bytes: its size, then its checksum."""
  if row.size is not None and len(data) < row.size:
    return _member_problem(row, shard, f'cut: {len(data)} of its {row.size} bytes are '
                           f'there, from byte {row.where}')
  checked = Checked(row, size=len(data), read=True)
  found = checksums.digest(data, row.checksum[0]) if row.checksum else None
  checked = _compare(row, checked, found)
  if checked.problem is not None and checked.problem.kind == 'wrong_checksum':
    checked.problem = dataclasses.replace(checked.problem, detail=checked.problem.detail
                                          .replace('the file has', f'its member in {shard} has'))
  return checked


def _check_tar(f, shard: str, rows: List[Row], problems: List[Problem]) -> Tuple[List[Checked], Optional[int]]:
  try:
    members = shard_contents.tar_members(f)
  except shard_contents.ShardDamage as e:
    problems.append(Problem('damaged_shard', shard, str(e)))
    members = None
  by_name = {m.name: m for m in members or ()}
  out = []
  for row in sorted(rows, key=lambda r: r.where if r.where is not None else -1):
    member = by_name.get(row.member)
    if row.where is None:
      out.append(_member_problem(row, shard, 'its row names no member_offset'))
      continue
    if members is not None and (member is None or member.offset != row.where):
      out.append(_member_problem(
          row, shard, f'no member {row.member} at byte {row.where}' +
          (f' (it starts at byte {member.offset})' if member else ' (no such member)')))
      continue
    if member is not None and row.size is not None and member.size != row.size:
      out.append(Checked(row, Problem('wrong_size', row.path, f'{shard}: the member holds '
                                      f'{member.size} bytes; its row says {row.size}'),
                         size=member.size))
      continue
    f.seek(row.where)
    size = row.size if row.size is not None else (member.size if member else 0)
    out.append(_digest_member(row, f.read(size), shard))
  samples = None if members is None else len(shard_contents.tar_samples(members))
  return out, samples


def _check_parquet(f, shard: str, rows: List[Row], problems: List[Problem]) -> Tuple[List[Checked], Optional[int]]:
  wanted: Dict[int, List[Row]] = {}
  out = []
  for row in rows:
    if row.where is None:
      out.append(_member_problem(row, shard, 'its row names no shard_row'))
    else:
      wanted.setdefault(row.where, []).append(row)
  samples = 0
  try:
    for number, data in shard_contents.parquet_images(f):
      samples = number + 1
      for row in wanted.pop(number, ()):
        out.append(_digest_member(row, data or b'', shard))
  except shard_contents.ShardDamage as e:
    problems.append(Problem('damaged_shard', shard, str(e)))
    samples = None
  for number, left in sorted(wanted.items()):
    for row in left:
      out.append(_member_problem(row, shard, f'no row {number}' + (
          f' (it holds {samples})' if samples is not None else ' (it cannot be read)')))
  return out, samples


def _check_shard(root: root_files.OutputRoot, shard: str, rows: List[Row],
                 entry: Optional[dict]) -> ShardChecked:
  """A shard's rows, read in one pass of the shard, and the shard against its entry."""
  problems: List[Problem] = []
  try:
    with root.open_read(shard, buffer=checksums.READ_BYTES) as f:
      f.seek(0, 2)
      size = f.tell()
      f.seek(0)
      if shard.endswith('.parquet'):
        out, samples = _check_parquet(f, shard, rows, problems)
      else:
        out, samples = _check_tar(f, shard, rows, problems)
  except FileNotFoundError:
    return ShardChecked(shard, [], [Problem('missing_shard', shard,
                                            'removed while verify ran')])
  if entry is None:
    problems.append(Problem('index_mismatch', shard, f'{shards_lib.INDEX} does not '
                            'list it'))
  else:
    if entry.get('bytes') is not None and entry['bytes'] != size:
      problems.append(Problem('wrong_size', shard, f'{size} bytes; {shards_lib.INDEX} '
                              f'says {entry["bytes"]}'))
    if samples is not None and entry.get('nsamples') != samples:
      problems.append(Problem('index_mismatch', shard, f'holds {samples} samples; '
                              f'{shards_lib.INDEX} says {entry.get("nsamples")}'))
  return ShardChecked(shard, out, problems, size)


def _check_shard_safely(root, shard, rows, entry) -> ShardChecked:
  try:
    return _check_shard(root, shard, rows, entry)
  except Exception as e:  # pylint: disable=broad-except
    if _is_fault(e) and not _is_damage(e):
      raise _unreachable(root.url_of(shard), e) from None
    return ShardChecked(shard, [], [Problem('damaged_shard', shard,
                                            f'{type(e).__name__}: {str(e)[:200]}')])


def default_jobs(root: root_files.OutputRoot) -> int:
  """Reads at once: a few per core on a local disk (hashing is the work), more on an
  object store (each request waits on the network)."""
  cores = os.cpu_count() or 1
  return min(32, 2 * cores) if root.local else 32


# ---------------------------------------------------------------------------------------
# The report and _SUCCESS


def check_success(root: root_files.OutputRoot, summary: Summary) -> None:
  summary.success_marker = root.exists(naming.SUCCESS)
  try:
    report = json.loads(root.read(naming.REPORT))
    if not isinstance(report, dict):
      raise ValueError('not a JSON object')
  except FileNotFoundError:
    report = None
  except ValueError as e:
    summary.problems.append(Problem('damaged_report', naming.REPORT, str(e)[:200]))
    return
  if report is not None and report.get('success'):
    rows = (report.get('manifest') or {}).get('rows')
    if (isinstance(rows, int) and summary.parts and rows != summary.rows
        and not any(p.kind.endswith('part') for p in summary.problems)):
      summary.problems.append(Problem('report_mismatch', naming.REPORT,
                                      f'says {rows} manifest rows; the manifest holds '
                                      f'{summary.rows}'))
  if summary.success_marker:
    if report is None:
      summary.problems.append(Problem(
          'success_without_report', naming.SUCCESS,
          'present, but _report.json is absent: no finished run wrote it'))
    elif not report.get('success'):
      cause = (report.get('error') or '; '.join(report.get('first_failures') or [])
               or f'{report.get("failed")} images failed')
      summary.problems.append(Problem(
          'success_but_run_failed', naming.SUCCESS,
          f'present, but _report.json says the run failed ({cause[:200]})'))
    return
  if report is None:
    detail = 'absent, and so is _report.json: the export never finished here'
  elif report.get('success'):
    detail = 'absent, though _report.json says the run succeeded'
  else:
    cause = (report.get('error') or '; '.join(report.get('first_failures') or [])
             or f'{report.get("failed")} images failed')
    detail = f'absent: _report.json says the run failed ({cause[:200]})'
  summary.problems.append(Problem('no_success', naming.SUCCESS, detail))


def _is_own(path: str) -> bool:
  """unrecord's own files (`_manifest/`, `_report.json`, the lock...), not images."""
  return path.split('/', 1)[0].startswith('_')


# ---------------------------------------------------------------------------------------
# The whole check


def verify(root: root_files.OutputRoot, *, jobs: Optional[int] = None,
           progress: Optional[Callable[[int], Progress]] = None) -> Summary:
  """Checks the root (see the module's docstring); `progress(total)` makes the progress
  display. Raises Unreachable when the storage fails under it."""
  started = time.monotonic()
  summary = Summary(root.url)
  try:
    rows = read_parts(root, summary)
    summary.rows = len(rows)
    check_success(root, summary)
    found = listing(root)
  except Unreachable:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise _unreachable(root.url, e) from None
  problems: List[Problem] = []
  listed = set()
  work = []
  in_shards: Dict[str, List[Row]] = {}
  for row in rows:
    if row.shard:
      in_shards.setdefault(row.shard, []).append(row)
      continue
    listed.add(row.path)
    info = found.get(row.path)
    if info is None:
      problems.append(Problem('missing_file', row.path, 'its row names it; it is not '
                              'there'))
      continue
    work.append((row, info))
  try:
    index = read_shard_index(root, rows, summary)
  except Exception as e:  # pylint: disable=broad-except
    raise _unreachable(root.url_of(shards_lib.INDEX), e) from None
  if index or in_shards:
    listed.add(shards_lib.INDEX)
  shard_work = []
  for shard in sorted(set(in_shards) | set(index)):
    listed.add(shard)
    mine = in_shards.get(shard, [])
    if shard not in found:
      first = f' (first: {mine[0].member})' if mine else ''
      problems.append(Problem('missing_shard', shard, f'{len(mine)} manifest rows name '
                              f'members of it{first}; it is not there'))
      continue
    shard_work.append((shard, mine, index.get(shard)))
  store_crc32c = _store_crc32c(root)
  shown = progress(len(work) + sum(len(m) for _, m, _ in shard_work)) if progress else None
  batches = [work[i:i + BATCH_ROWS] for i in range(0, len(work), BATCH_ROWS)]
  checked: Dict[str, Optional[Problem]] = {}
  fallback = 0
  try:
    with concurrent.futures.ThreadPoolExecutor(jobs or default_jobs(root)) as pool:
      for one in pool.map(lambda w: _check_shard_safely(root, *w), shard_work):
        summary.shards_checked += 1
        problems += one.problems
        for member in one.rows:
          summary.members_checked += 1
          summary.bytes_checked += member.size
          if member.row.checksum:
            algorithm = member.row.checksum[0]
            summary.checksums[algorithm] = summary.checksums.get(algorithm, 0) + 1
          if member.problem is not None:
            problems.append(member.problem)
        summary.files_read += 1
        if shown:
          shown.add(len(one.rows))
      for results in pool.map(lambda b: _check_batch(root, b, store_crc32c), batches):
        for one in results:
          row = one.row
          summary.files_checked += 1
          summary.bytes_checked += one.size
          if row.checksum:
            summary.checksums[row.checksum[0]] = summary.checksums.get(row.checksum[0],
                                                                       0) + 1
          summary.from_store += one.from_store
          summary.files_read += one.read
          fallback += one.read and row.checksum is not None and row.checksum[0] == 'crc32c'
          checked[row.path] = one.problem
        if shown:
          shown.add(len(results))
  finally:
    if shown:
      shown.close()
  if fallback and store_crc32c is not None:
    summary.notes.append(f'{fallback:,} crc32c rows were checked by reading their file: '
                         'the store keeps no crc32c for them')
  problems += [p for p in checked.values() if p is not None]
  problems += [Problem('unlisted_file', path, 'no manifest row names it'
                       + (' (a temp file of a run that stopped)'
                          if root_files.is_temp_name(path) else ''))
               for path in found if path not in listed and not _is_own(path)]
  problems.sort(key=lambda p: p.path)
  summary.problems = sorted(summary.problems, key=lambda p: p.path) + problems
  summary.seconds = time.monotonic() - started
  return summary
