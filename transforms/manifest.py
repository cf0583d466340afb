"""The manifest as sorted runs on storage, merged into `_manifest.jsonl` in one pass.

Workers never send manifest rows through the runner. Each one appends an entry per
image to a `RunWriter`, which writes them, sorted by output path, as run files under
`_unrecord_tmp/` of the output root. One worker then merges the runs (`merge_runs`):
memory stays flat however many images there are, since it holds one line per run, and
the rows are never parsed in the common case where each path has one entry.

An entry is one line of bytes, NUL-separated, sorted by its first field:

    path NUL kind NUL source-key NUL bytes NUL passthrough NUL class (JSON) NUL row (JSON)

`kind` is `w` (written by this run), `s` (left in place by --skip_existing) or `p` (the
previous run's manifest row). Paths never hold NUL (naming.check_relative_path) and the
JSON fields escape it, so UTF-8 byte order is path order.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import uuid
from typing import BinaryIO, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from transforms import output_root

SCRATCH = '_unrecord_tmp'
WRITTEN, SKIPPED, PREVIOUS = b'w', b's', b'p'
RUN_BYTES = 16 << 20  # entries held before a run is sorted and written
FAN_IN = 64  # runs merged at once; more are first merged into intermediate runs
Run = Tuple[str, int]  # a run file's name under the root, and how many entries it holds


@dataclasses.dataclass(frozen=True)
class Entry:
  """One parsed entry (only for paths that need a decision: duplicates, collisions)."""
  path: str
  kind: bytes
  source_key: str
  bytes: int
  passthrough: bool
  class_key: bytes  # the class as JSON text: for telling classes apart, never read
  line: bytes

  @classmethod
  def parse(cls, raw: bytes) -> 'Entry':
    path, kind, source_key, size, passthrough, class_key, line = raw.split(b'\0', 6)
    return cls(path.decode('utf-8'), kind, source_key.decode('utf-8'), int(size),
               passthrough == b'1', class_key, line)

  def row(self) -> dict:
    return json.loads(self.line)


def entry(kind: bytes, row: dict, line: str) -> bytes:
  """The entry for a manifest row and its JSON line (`line` ends with a newline)."""
  label = row.get('label_name') or row.get('label')
  return b'\0'.join((
      row['path'].encode('utf-8'), kind,
      f'{row["source"]}\x01{row["index"]}\x01{row["n"]}'.encode('utf-8'),
      b'%d' % (row.get('bytes') or 0), b'1' if row.get('passthrough') else b'0',
      json.encoder.encode_basestring_ascii('' if label is None else str(label)).encode(),
      line.encode('utf-8')))


def path_of(raw: bytes) -> bytes:
  return raw[:raw.index(b'\0')]


class RunWriter:
  """Collects entries and writes them as sorted run files; `flush()` returns them as
  (name, number of entries), so the merge can tell a short read from a short run.

  Run names are random, so a retried bundle's runs never overwrite a committed one; runs
  nobody reports are removed with the scratch folder at the end of the job.
  """

  def __init__(self, root: output_root.OutputRoot, run_bytes: int = RUN_BYTES):
    self._root = root
    self._run_bytes = run_bytes
    self._entries: List[bytes] = []
    self._held = 0
    self.runs: List[Run] = []

  def add(self, raw: bytes) -> None:
    self._entries.append(raw)
    self._held += len(raw)
    if self._held >= self._run_bytes:
      self._write_run()

  def flush(self) -> List[Run]:
    """Writes what is held; returns (and forgets) every run written so far."""
    if self._entries:
      self._write_run()
    runs, self.runs = self.runs, []
    return runs

  def _write_run(self) -> None:
    self._entries.sort()
    name = _run_name()
    self._root.write(name, b''.join(self._entries))
    self.runs.append((name, len(self._entries)))
    self._entries, self._held = [], 0


def _run_name() -> str:
  return f'{SCRATCH}/run-{uuid.uuid4().hex}'


def _lines(root: output_root.OutputRoot, run: Run) -> Iterator[bytes]:
  name, expected = run
  count = 0
  with root.open_read(name) as f:
    for count, raw in enumerate(f, 1):
      yield raw
  if count != expected:
    raise OSError(f'manifest run {root.url_of(name)} read back {count} entries of '
                  f'{expected}; the store returned a short read')


def merged(root: output_root.OutputRoot, runs: List[Run], fan_in: int = FAN_IN
           ) -> Iterator[bytes]:
  """Every entry of `runs` in path order, with at most `fan_in` run files open at once."""
  runs = list(runs)
  while len(runs) > fan_in:
    group, runs = runs[:fan_in], runs[fan_in:]
    name = _run_name()
    with root.open_write(name) as out:
      out.writelines(heapq.merge(*(_lines(root, r) for r in group)))
    runs.append((name, sum(count for _, count in group)))
  return heapq.merge(*(_lines(root, r) for r in runs))


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
class MergeResult:
  written: int = 0
  skipped: int = 0
  kept_from_previous: int = 0
  bytes: int = 0
  passthrough: int = 0
  stale: List[str] = dataclasses.field(default_factory=list)
  collisions: List[Collision] = dataclasses.field(default_factory=list)


def merge_runs(entries: Iterable[bytes], out: BinaryIO, *,
               keep_previous: Callable[[dict], bool],
               on_disk_sha256: Callable[[str], Optional[str]],
               sample: Callable[[bytes, bytes], None]) -> MergeResult:
  """Writes the manifest lines for `entries` (in path order) to `out`.

  Per path: this run's row wins (replays of one image write identical rows; different
  images with one name keep the written row whose sha256 matches the file on disk, the
  others become collisions, also those --skip_existing left because an image of this run
  wrote their name first); an image --skip_existing left keeps the previous manifest's row
  if there is one, else a row made from its file; a path only the previous manifest has
  is kept if `keep_previous(row)`, else reported in `stale`. `sample(class_key, line)`
  sees every written or skipped row in path order.
  """
  result = MergeResult()
  for _, group in itertools.groupby(entries, key=path_of):
    group = list(group)
    if len(group) == 1:
      # The usual case, one image made this path: its fields are split, never parsed.
      _, kind, _, size, passthrough, class_key, line = group[0].split(b'\0', 6)
      if kind == WRITTEN:
        _emit(out, result, int(size), passthrough == b'1', class_key, line, sample)
        continue
    found = [Entry.parse(raw) for raw in group]
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
        _emit_entry(out, result, next(iter(by_source.values())), sample)
        continue
      digest = on_disk_sha256(found[0].path)
      rows = [(e, e.row()) for e in by_source.values()]
      kept = next(((e, r) for e, r in rows
                   if e.kind == WRITTEN and r.get('sha256') == digest), None)
      if kept is not None:
        _emit_entry(out, result, kept[0], sample)
      others = [(e, r) for e, r in rows if kept is None or e is not kept[0]]
      result.collisions.append(Collision(
          found[0].path, kept[1] if kept else None, [r for _, r in others],
          sum(e.kind == SKIPPED for e, _ in others)))
      continue
    skipped = next((e for e in found if e.kind == SKIPPED), None)
    if skipped is not None:
      result.skipped += 1
      sample(skipped.class_key, skipped.line)
      out.write(previous.line if previous is not None else skipped.line)
    elif keep_previous(previous.row()):
      result.kept_from_previous += 1
      out.write(previous.line)
    else:
      result.stale.append(previous.path)
  return result


def _emit_entry(out: BinaryIO, result: MergeResult, e: Entry,
                sample: Callable[[bytes, bytes], None]) -> None:
  _emit(out, result, e.bytes, e.passthrough, e.class_key, e.line, sample)


def _emit(out: BinaryIO, result: MergeResult, size: int, passthrough: bool,
          class_key: bytes, line: bytes, sample: Callable[[bytes, bytes], None]) -> None:
  out.write(line)
  result.written += 1
  result.bytes += size
  result.passthrough += passthrough
  sample(class_key, line)


def previous_entries(lines: Iterable[bytes]) -> Iterator[bytes]:
  """Entries for the rows of an earlier `_manifest.jsonl`; unreadable lines are skipped."""
  for line in lines:
    try:
      row = json.loads(line)
      yield entry(PREVIOUS, row, line.decode('utf-8').rstrip('\n') + '\n')
    except (ValueError, KeyError, TypeError, AttributeError):
      continue


def sorted_runs(root: output_root.OutputRoot, entries: Iterable[bytes]) -> List[Run]:
  """Writes `entries` (any order) as sorted runs; returns their names."""
  writer = RunWriter(root)
  for raw in entries:
    writer.add(raw)
  return writer.flush()
