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

import collections
import dataclasses
import heapq
import itertools
import json
import uuid
from typing import (TYPE_CHECKING, BinaryIO, Callable, Dict, Hashable, Iterable, Iterator,
                    List, Optional, Tuple)

from transforms import decode
from transforms import errors
from transforms import image_formats
from transforms import naming
from transforms import output_root
from transforms import render

if TYPE_CHECKING:  # types only: export imports manifest
  from transforms import export

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


# ---------------------------------------------------------------------------------------
# Rows: one per image, and the few the report shows


def manifest_row(image: decode.DecodedImage, name: str, rendered: render.Rendered,
                 config: 'export.ExportConfig') -> dict:
  """The `_manifest.jsonl` row for one written image."""
  features = image.features
  label_key, id_key = config.render.label_key, config.render.id_key
  label = features.get(label_key) if label_key else None
  names = config.render.label_names
  return {  # keys in sorted order: `manifest_line(row, in_key_order=True)` keeps it
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
      'sha256': output_root.sha256(rendered.data),
      'shape_in': list(image.pixels.shape if image.pixels is not None
                       else image.stored_shape),
      'shape_out': list(rendered.shape),
      'source': image.ref.path,
      'value_range': list(rendered.value_range) if rendered.value_range else None,
  }


def existing_row(image: decode.DecodedImage, name: str, root: output_root.OutputRoot,
                 config: 'export.ExportConfig') -> Optional[dict]:
  """The manifest row for a finished image --skip_existing leaves in place, from the file
  itself; None when there is no such file, or it is not a whole image (empty, cut short,
  damaged): that one is written again.

  `write_manifest` prefers the previous run's row for the same path when there is one.
  """
  try:
    data = root.read(name)
  except FileNotFoundError:
    return None
  try:
    shape, dtype = image_formats.check_encoded(data, None, config.image.max_pixels)
  except errors.UnrecordError:
    return None
  rendered = render.Rendered(data, tuple(shape or ()), dtype, ('existing',), 'existing',
                             False, None)
  row = manifest_row(image, name, rendered, config)
  row['shape_out'] = list(shape) if shape else None
  return row


_ROW_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False)


def _c_row_encoder(sort_keys: bool):
  """The row encoder's C core, made once (JSONEncoder.encode makes it anew on every
  call); the same bytes as json.dumps (docs/benchmarks.md)."""
  if not (json.encoder.c_make_encoder and json.encoder.c_encode_basestring):
    return None
  return json.encoder.c_make_encoder(
      None, _ROW_ENCODER.default, json.encoder.c_encode_basestring, None,
      _ROW_ENCODER.key_separator, _ROW_ENCODER.item_separator, sort_keys, False, True)


_ROW_C_ENCODER = _c_row_encoder(sort_keys=True)
_ROW_C_ENCODER_AS_BUILT = _c_row_encoder(sort_keys=False)


def manifest_line(row: dict, *, in_key_order: bool = False) -> str:
  """One `_manifest.jsonl` line: `json.dumps(row, sort_keys=True, ensure_ascii=False)`
  and a newline (keys sorted, so equal rows give equal lines).

  `in_key_order`: the caller built `row` with its keys already sorted and no dict among
  its values, as `manifest_row` does, so the keys are written as they come, unsorted
  again.
  """
  encoder = _ROW_C_ENCODER_AS_BUILT if in_key_order else _ROW_C_ENCODER
  if encoder is None:
    return _ROW_ENCODER.encode(row) + '\n'
  return ''.join(encoder(row, 0)) + '\n'


SAMPLES_PER_CLASS = 8
MAX_SAMPLES = 48


class RowSampler:
  """Manifest rows to show in the report: the first few of each class where labels
  exist, else the first. Fed (class, row) in path order; holds only what it may show.

  Only the first `limit` classes can be shown, so rows of later classes are never kept.
  """

  def __init__(self, per_class: int = SAMPLES_PER_CLASS, limit: int = MAX_SAMPLES):
    self._per_class = per_class
    self._limit = limit
    self._by_class = collections.OrderedDict()

  def add(self, class_key: Hashable, row) -> None:
    bucket = self._by_class.get(class_key)
    if bucket is None:
      if len(self._by_class) >= self._limit:
        return
      bucket = self._by_class[class_key] = []
    if len(bucket) < self._per_class:
      bucket.append(row)

  def chosen(self) -> list:
    buckets = [list(bucket) for bucket in self._by_class.values()]
    chosen = []
    while len(chosen) < self._limit and any(buckets):  # round-robin over classes
      for bucket in buckets:
        if bucket and len(chosen) < self._limit:
          chosen.append(bucket.pop(0))
    return chosen


# ---------------------------------------------------------------------------------------
# The file: the workers' runs merged into _manifest.jsonl


def write_manifest(runs: Iterable[str], config: 'export.ExportConfig') -> dict:
  """Merges the workers' sorted runs into `_manifest.jsonl`, sorted by path.

  A skipped image keeps its row from the previous manifest, byte for byte, when that
  manifest has one (a re-run over unchanged input rewrites an identical manifest); else
  (e.g. after a killed run) its row is made from the file found in place. With
  --incremental, rows of shards this run did not process are kept, and images whose
  shard changed and no longer makes them are deleted. Names taken by more than one
  image come back as `collisions` (Failure rows) for the dead letter.
  """
  root = output_root.OutputRoot(config.output, config.read.storage_options)
  runs = list(runs)
  if root.exists(naming.MANIFEST):
    with root.open_read(naming.MANIFEST) as previous:
      runs += sorted_runs(root, previous_entries(previous))
  sampler = RowSampler()
  with root.open_write(naming.MANIFEST) as out:
    result = merge_runs(
        merged(root, runs), out, keep_previous=_keeps_previous(config),
        on_disk_sha256=lambda path: _sha256_or_none(root, path),
        sample=sampler.add)
  for path in result.stale:
    try:
      root.fs.rm_file(root.path(path))
    except FileNotFoundError:
      pass
  unlisted = _remove_unlisted(root) if config.overwrite else 0
  failures = [f for c in result.collisions for f in _collision_failures(c)]
  skipped = sum(c.skipped for c in result.collisions)
  return {'written': result.written, 'skipped': result.skipped, 'bytes': result.bytes,
          'passthrough': result.passthrough,
          'stale_removed': len(result.stale) + unlisted,
          'samples': [json.loads(line) for line in sampler.chosen()],
          'collisions': failures,
          # The workers counted each colliding image as written (or skipped); these
          # take those counts back, as failures (the metrics' corrections).
          'count_corrections': {f'failed_{errors.NAME_COLLISION}': len(failures),
                                'images_written': skipped - len(failures),
                                'images_skipped': -skipped}}


def _keeps_previous(config: 'export.ExportConfig'):
  """Whether a row only the previous manifest has stays (its file kept) or goes (removed).

  The one owner of that decision: --overwrite removes them all; --incremental removes
  those of the shards it processed again (they no longer make that image); every other
  run keeps them, so the manifest goes on listing every image file in the root.
  """
  if config.overwrite:
    return lambda row: False
  if config.incremental:
    processed = {url for url, _ in config.processed}
    return lambda row: row.get('source') not in processed
  return lambda row: True


def _remove_unlisted(root: output_root.OutputRoot) -> int:
  """--overwrite: removes every file under the root that the new manifest does not list
  (a killed run's images, say), except unrecord's own files; returns how many.

  Holds the root's listing in memory, one path per file (docs/scale.md).
  """
  prefix = root.path('')
  found = {p[len(prefix):] for p in root.fs.find(root.root) if p.startswith(prefix)}
  with root.open_read(naming.MANIFEST) as listed:
    for line in listed:
      found.discard(json.loads(line)['path'])
  removed = 0
  for path in sorted(found):
    if path.split('/', 1)[0].startswith('_') or output_root.is_temp_name(path):
      continue
    try:
      root.fs.rm_file(root.path(path))
      removed += 1
    except FileNotFoundError:
      pass
  return removed


def _sha256_or_none(root: output_root.OutputRoot, path: str) -> Optional[str]:
  try:
    return output_root.sha256(root.read(path))
  except OSError:
    return None


def _collision_failures(collision: Collision) -> List[errors.Failure]:
  rows = ([collision.kept] if collision.kept else []) + collision.others
  others = ', '.join(f'{r["source"]} record {r["index"]}' for r in rows)
  return [errors.Failure(
      reason=errors.NAME_COLLISION, stage='write', path=row['source'], index=row['index'],
      offset=row['offset'], n=row['n'],
      message=f'output name {collision.path!r} is taken by more than one image ({others}); '
      'add {id}, {index} or {n} to --name_template to tell them apart')
      for row in collision.others]
