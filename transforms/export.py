"""The export's work, Beam-free: its config, the per-range work, and the files that end it.

`export_range` reads, decodes, renders and writes one record range, on a worker, and
returns its manifest runs and failures; `ptransforms.ExportImages` runs it over every
range and then calls `write_manifest`, `write_dead_letter` and `write_report` once each.

Outputs under the root: one file per image, and beside them (never in subfolders)
`_manifest.jsonl`, `_dead_letter.jsonl`, `_dead_letter.tfrecord`, `_report.json`, and
`_SUCCESS` last, only when failures <= max_failures. Pixels never cross a shuffle: each
worker reads, decodes, encodes and writes its own record ranges; manifest rows go to
sorted run files that one worker merges (transforms/manifest.py).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import io
import json
import time
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

import cv2

from transforms import decode
from transforms import errors
from transforms import image_formats
from transforms import incremental
from transforms import manifest as manifest_lib
from transforms import naming
from transforms import output_root
from transforms import progress
from transforms import read
from transforms import record_layout
from transforms import render
from transforms import report as report_lib
from transforms import root_claim
from transforms import tfrecord

MANIFEST = naming.MANIFEST
DEAD_LETTER_ROWS = naming.DEAD_LETTER_ROWS
DEAD_LETTER_RECORDS = naming.DEAD_LETTER_RECORDS
REPORT = naming.REPORT
REPORT_HTML = naming.REPORT_HTML
SUCCESS = naming.SUCCESS


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """The resolved job: inputs, output root, and how each image is read and rendered."""
  patterns: Tuple[str, ...]
  output: str
  read: read.ReadConfig = read.ReadConfig()
  image: decode.ImageSpec = decode.ImageSpec()
  # Further image keys written from each record (several --image_key values).
  more_images: Tuple[decode.ImageSpec, ...] = ()
  render: render.RenderConfig = render.RenderConfig()
  skip_existing: bool = False
  max_failures: int = 0
  run_started: float = 0.0
  options_used: Tuple[Tuple[str, object], ...] = ()
  # Where workers send live counts (local runs; see transforms/progress.py).
  progress: Optional[Tuple[str, int]] = None
  # --incremental: the shards this run processes, with their fingerprints; the manifest
  # keeps other shards' rows and the state file records these on success.
  incremental: bool = False
  processed: Tuple[Tuple[str, dict], ...] = ()
  # The output settings that make this export what it is (root_claim.identity); the
  # incremental state records them, so changed settings redo every shard.
  settings: Tuple[Tuple[str, object], ...] = ()
  # --overwrite: the root's earlier images that this run does not write are removed.
  overwrite: bool = False
  # An object-store root's lease (root_claim), released by the job's last step.
  lock_run_id: Optional[str] = None
  # What the launch settled (plan.settled_choices), as JSON: the report shows it.
  choices: str = '{}'

  def __post_init__(self):
    if not self.patterns and not self.incremental:
      raise errors.ConfigError('no input given; pass --input PATTERN')
    if not self.output:
      raise errors.ConfigError('no output given; pass --output URL')
    if self.max_failures < 0:
      raise errors.ConfigError('--max_failures must be 0 or more')
    if self.overwrite and (self.skip_existing or self.incremental):
      raise errors.ConfigError(
          '--overwrite replaces the output; it does not go with --skip_existing or '
          '--incremental, which keep it')


def manifest_row(image: decode.DecodedImage, name: str, rendered: render.Rendered,
                 config: ExportConfig) -> dict:
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
                 config: ExportConfig) -> Optional[dict]:
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


class RangeWorker:
  """What a worker holds to export record ranges: the output root, the image decoder
  (a child process when isolated), the record decoders, the namer and the progress
  sender. Made once per worker (`DoFn.setup`), released by `close()`."""

  def __init__(self, config: ExportConfig):
    cv2.setNumThreads(0)  # the runner's workers are the parallelism; no pool per worker
    self.config = config
    self.root = output_root.OutputRoot(config.output, config.read.storage_options)
    self.decoder = decode.make_decoder(config.image)
    self.records = record_layout.KeysDecoder((config.image,) + config.more_images,
                                             self.decoder)
    self.progress = progress.ProgressSender(config.progress)
    self.namer = naming.Namer(config.render)

  def close(self) -> None:
    self.progress.close()
    self.decoder.close()


def export_range(file_range: tfrecord.FileRange, worker: RangeWorker,
                 tally: progress.Tally
                 ) -> Iterator[Union[manifest_lib.Run, errors.Failure]]:
  """Exports every image of one record range: its files are written, and it yields the
  range's sorted manifest runs (`manifest_lib.Run`) and a Failure per image or record
  that failed. Counts go to `tally`.

  Records are taken in chunks (`_chunks`), and each stage runs over a whole chunk before
  the next starts: decode, then name and encode, then write, then manifest rows, so each
  stage's code and data stay in the core's caches (docs/benchmarks.md).
  """
  runs = manifest_lib.RunWriter(worker.root)
  slots = read.read_slots(read.read_range(file_range, worker.config.read), tally)
  for chunk in _chunks(slots, CHUNK_RECORDS, CHUNK_BYTES):
    images = []
    for item in record_layout.decode_records(chunk, worker.records, tally):
      if isinstance(item, errors.Failure):
        yield item
      else:
        images.append(item)
    rendered = yield from _render(images, worker, runs, tally)
    written = yield from _write(rendered, worker, tally)
    _add_rows(written, worker, runs, tally)
  yield from runs.flush()


def _render(images, worker: RangeWorker, runs: manifest_lib.RunWriter,
            tally: progress.Tally):
  """(image, name, Rendered) for the images to write; --skip_existing's are recorded,
  failures yielded."""
  config = worker.config
  rendered = []
  for image in images:
    stage = 'name'
    try:
      name = worker.namer.name(image)
      row = existing_row(image, name, worker.root, config) if config.skip_existing else None
      if row is not None:
        runs.add(manifest_lib.entry(manifest_lib.SKIPPED, row, manifest_line(row)))
        tally.add('images_skipped')
        worker.progress.count('skipped')
        continue
      stage = 'encode'
      rendered.append((image, name, render.render(image, config.render, worker.decoder)))
    except errors.UnrecordError as e:
      yield tally.fail(_located(e, image), stage, n=image.n)
  return rendered


def _write(rendered, worker: RangeWorker, tally: progress.Tally):
  """The (image, name, Rendered) whose file was written; failures yielded."""
  written = []
  for image, name, result in rendered:
    try:
      worker.root.write(name, result.data)
    except errors.UnrecordError as e:
      yield tally.fail(_located(e, image), 'write', n=image.n)
      continue
    written.append((image, name, result))
  return written


def _add_rows(written, worker: RangeWorker, runs: manifest_lib.RunWriter,
              tally: progress.Tally) -> None:
  size = 0
  for image, name, result in written:
    row = manifest_row(image, name, result, worker.config)
    runs.add(manifest_lib.entry(
        manifest_lib.WRITTEN, row, manifest_line(row, in_key_order=True)))
    size += row['bytes']
  tally.add('images_written', len(written))
  tally.add('bytes_written', size)
  worker.progress.count('written', len(written))


# A chunk ends after this many records, or once it holds this many payload bytes: small
# images get the chunk's gain, and large ones are still encoded while their bytes are in
# the core's own cache (docs/benchmarks.md).
CHUNK_RECORDS = 64
CHUNK_BYTES = 256 << 10


def _chunks(slots: Iterable, records: int, size: int) -> Iterator[list]:
  """Records (and Failure rows) in lists of up to `records`, or up to and including the
  record that brings the payloads to `size` bytes."""
  chunk, held = [], 0
  for slot in slots:
    chunk.append(slot)
    if isinstance(slot, tuple):  # a (RecordRef, bytes) record, not a Failure
      held += len(slot[1])
    if len(chunk) >= records or held >= size:
      yield chunk
      chunk, held = [], 0
  if chunk:
    yield chunk


def _located(error: errors.UnrecordError, image: decode.DecodedImage) -> errors.UnrecordError:
  return error.at(image.ref.path, image.ref.index, image.ref.offset)


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


def _jsonl(rows: Iterable[dict]) -> bytes:
  return ''.join(manifest_line(r) for r in rows).encode('utf-8')


def write_manifest(runs: Iterable[str], config: ExportConfig) -> dict:
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
  if root.exists(MANIFEST):
    with root.open_read(MANIFEST) as previous:
      runs += manifest_lib.sorted_runs(root, manifest_lib.previous_entries(previous))
  sampler = report_lib.RowSampler()
  with root.open_write(MANIFEST) as out:
    merged = manifest_lib.merge_runs(
        manifest_lib.merged(root, runs), out, keep_previous=_keeps_previous(config),
        on_disk_sha256=lambda path: _sha256_or_none(root, path),
        sample=sampler.add)
  for path in merged.stale:
    try:
      root.fs.rm_file(root.path(path))
    except FileNotFoundError:
      pass
  unlisted = _remove_unlisted(root) if config.overwrite else 0
  failures = [f for c in merged.collisions for f in _collision_failures(c)]
  skipped = sum(c.skipped for c in merged.collisions)
  return {'written': merged.written, 'skipped': merged.skipped, 'bytes': merged.bytes,
          'passthrough': merged.passthrough,
          'stale_removed': len(merged.stale) + unlisted,
          'samples': [json.loads(line) for line in sampler.chosen()],
          'collisions': failures,
          # The workers counted each colliding image as written (or skipped); these
          # take those counts back, as failures (the metrics' corrections).
          'count_corrections': {f'failed_{errors.NAME_COLLISION}': len(failures),
                                'images_written': skipped - len(failures),
                                'images_skipped': -skipped}}


def _keeps_previous(config: ExportConfig):
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
  with root.open_read(MANIFEST) as listed:
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


def _collision_failures(collision: manifest_lib.Collision) -> List[errors.Failure]:
  rows = ([collision.kept] if collision.kept else []) + collision.others
  others = ', '.join(f'{r["source"]} record {r["index"]}' for r in rows)
  return [errors.Failure(
      reason=errors.NAME_COLLISION, stage='write', path=row['source'], index=row['index'],
      offset=row['offset'], n=row['n'],
      message=f'output name {collision.path!r} is taken by more than one image ({others}); '
      'add {id}, {index} or {n} to --name_template to tell them apart')
      for row in collision.others]


def write_dead_letter(failures: Iterable[errors.Failure], config: ExportConfig) -> dict:
  """Writes `_dead_letter.jsonl` and the failed records' bytes to `_dead_letter.tfrecord`.

  Records that failed after decoding are fetched again from their source by offset, so
  they can be replayed; framing damage has no record to keep (`replayable: false`).
  """
  failures = sorted(failures, key=lambda f: (f.path or '', f.index or -1, f.n or 0,
                                             f.reason))
  payloads: Dict[Tuple[str, int], bytes] = {}
  rows = []
  for failure in failures:
    key = (failure.path, failure.index)
    if failure.payload is not None:
      payloads.setdefault(key, failure.payload)
    elif failure.stage != 'read' and key not in payloads and failure.offset is not None:
      fetched = read.fetch_record(failure.path, failure.offset, config.read)
      if fetched is not None:
        payloads[key] = fetched
    row = failure.to_row()
    row['replayable'] = key in payloads
    rows.append(row)
  root = output_root.OutputRoot(config.output, config.read.storage_options)
  root.write(DEAD_LETTER_ROWS, _jsonl(rows))
  records = io.BytesIO()
  with tfrecord.TFRecordWriter(records) as writer:
    for key in sorted(payloads):
      writer.write(payloads[key])
  root.write(DEAD_LETTER_RECORDS, records.getvalue())
  by_reason = collections.Counter()
  for failure in failures:
    by_reason[failure.reason] += failure.images
  return {'failed': sum(by_reason.values()), 'failed_by_reason': dict(by_reason),
          'first_failures': [_failure_line(r) for r in rows[:20]],
          'first_failure_rows': rows[:20]}


def _failure_line(row: dict) -> str:
  """A dead-letter row as one line: reason, file, record and byte offset, message."""
  where = [row['source'] or '(no file)']
  if row['index'] is not None:
    where.append(f'record {row["index"]}')
  if row['offset'] is not None:
    where.append(f'byte {row["offset"]}')
  if row['n'] is not None:
    where.append(f'image {row["n"]}')
  return f'[{row["reason"]}] {", ".join(where)}: {row["message"]}'


def write_report(config: ExportConfig, manifest: dict, dead_letter: dict,
                 spans: Iterable[Tuple[float, float]] = ()) -> dict:
  """Writes `_report.json` and `_report.html`, removes temp debris, then `_SUCCESS` if earned.

  `spans`: (start, end) of each record range's work, for the report's `work` block.
  """
  root = output_root.OutputRoot(config.output, config.read.storage_options)
  root.remove_temp_debris()
  root.remove_tree(manifest_lib.SCRATCH)
  finished = time.time()
  seconds = max(finished - (config.run_started or finished), 1e-9)
  success = dead_letter['failed'] <= config.max_failures
  report = {
      'output': config.output,
      'inputs': list(config.patterns),
      'written': manifest['written'],
      'passthrough': manifest['passthrough'],
      'skipped': manifest['skipped'],
      'failed': dead_letter['failed'],
      'failed_by_reason': dead_letter['failed_by_reason'],
      'first_failures': dead_letter['first_failures'],
      'first_failure_rows': dead_letter.get('first_failure_rows', []),
      'bytes_written': manifest['bytes'],
      'seconds': round(seconds, 3),
      'images_per_second': round(manifest['written'] / seconds, 1),
      'max_failures': config.max_failures,
      'success': success,
      'started': _iso(config.run_started or finished),
      'finished': _iso(finished),
      'options': {k: v for k, v in config.options_used},
      'settled': json.loads(config.choices),
      'warnings': [],
  }
  report['work'] = work_timing(spans, config.run_started or finished)
  if config.incremental:
    report['incremental'] = {'shards_processed': len(config.processed),
                             'stale_images_removed': manifest.get('stale_removed', 0)}
  _write_report_files(root, report, manifest['samples'])
  if success:
    if config.incremental:
      incremental.write_state(root, config.processed, dict(config.settings))
    root.write(SUCCESS, b'')
  if config.lock_run_id:
    root_claim.release_lease(root, config.lock_run_id)
  return report


def write_failure_report(config: ExportConfig, cause: str,
                         counts: Optional[Dict[str, int]]) -> bool:
  """After a run that stopped early (a storage fault, Ctrl-C, the runner failing): removes
  its temp files, then writes `_report.json`/`_report.html` saying so, with the images
  written so far (`counts` from the progress monitor; None where the launcher has none).

  Never raises: returns False when the root cannot take even that (it may be the fault).
  `_SUCCESS` stays absent, and the manifest is left as the last finished run wrote it.
  """
  try:
    root = output_root.OutputRoot(config.output, config.read.storage_options)
    root.remove_temp_debris()
    root.remove_tree(manifest_lib.SCRATCH)
    finished = time.time()
    counts = counts or {}
    report = {
        'output': config.output, 'inputs': list(config.patterns), 'success': False,
        # Counts the workers had reported when the run stopped: lower bounds.
        'error': cause, 'written': None, 'skipped': None, 'failed': None,
        'reported_so_far': {k: counts[k] for k in ('written', 'skipped', 'failed')
                            if k in counts},
        'passthrough': None, 'failed_by_reason': {}, 'first_failures': [cause],
        'bytes_written': None, 'max_failures': config.max_failures,
        'seconds': round(finished - (config.run_started or finished), 3),
        'images_per_second': None, 'started': _iso(config.run_started or finished),
        'finished': _iso(finished), 'options': {k: v for k, v in config.options_used},
        'work': None,
    }
    _write_report_files(root, report, [])
    return True
  except Exception:  # pylint: disable=broad-except
    return False


def work_timing(spans: Iterable[Tuple[float, float]], run_started: float
                ) -> Optional[dict]:
  """When the workers worked on record ranges, against the whole run (None: no range).

  `seconds` runs from the first range's start to the last range's end: the job without
  its start-up (`startup_seconds`: launch, planning, workers starting) and without the
  manifest merge and report after it. `range_seconds` sums every range's own time; over
  `seconds`, it tells how many workers were busy on average. Spans are the workers'
  clocks; `startup_seconds` sets the first against the launcher's, so on a cluster it
  is only as good as their clocks agree (NTP keeps Dataflow's VMs within milliseconds).
  """
  spans = list(spans)
  if not spans:
    return None
  first, last = min(s for s, _ in spans), max(e for _, e in spans)
  busy = sum(e - s for s, e in spans)
  return {'ranges': len(spans), 'seconds': round(last - first, 3),
          'startup_seconds': round(first - run_started, 3),
          'range_seconds': round(busy, 3),
          'mean_busy_workers': round(busy / (last - first), 2) if last > first else None}


# More than this share of the report's sampled images being one flat value warns: the
# value range, the image key or the layout was probably settled wrong.
UNIFORM_WARNING_SHARE = 0.05


def _write_report_files(root: output_root.OutputRoot, report: dict, samples: List[dict]) -> None:
  """`_report.json`, then `_report.html`, whose sample grid is left out rather than fail
  the run. The sampled images are looked at first: too many uniform ones add a warning."""
  try:
    thumbnails, uniform = _thumbnails(root, samples)
  except Exception:  # pylint: disable=broad-except  (a picture is never worth a failed run)
    thumbnails, uniform = [], 0
  if thumbnails and uniform > UNIFORM_WARNING_SHARE * len(thumbnails):
    report.setdefault('warnings', []).append(
        f'{uniform} of {len(thumbnails)} sampled images are uniform (every pixel the same '
        'value): check the settled value range, image key and layout (_report.json '
        '"settled")')
  root.write(REPORT, (json.dumps(report, indent=2, sort_keys=True) + '\n').encode())
  try:
    page = report_lib.render_html(report, thumbnails)
  except Exception:  # pylint: disable=broad-except
    page = report_lib.render_html(report, [])
  root.write(REPORT_HTML, page.encode('utf-8'))


def _thumbnails(root: output_root.OutputRoot, rows: List[dict]):
  """(class, caption, thumbnail PNG) for the report's sample grid, in class order, and
  how many of those images are uniform."""
  samples, uniform = [], 0
  for row in rows:
    try:
      pixels = report_lib.decode_written(root.read(row['path']))
      png = report_lib.thumbnail_png(pixels)
    except Exception:  # pylint: disable=broad-except  (a picture is never worth a failed run)
      continue
    uniform += bool(pixels.size) and pixels.min() == pixels.max()
    label = row.get('label_name') or row.get('label')
    order = row['label'] if isinstance(row.get('label'), int) else float('inf')
    samples.append((order, '' if label is None else str(label), row, png))
  samples.sort(key=lambda s: (s[0], s[1]))  # stable: path order within a class
  captions = report_lib.distinct_captions(
      [str(row['id']) if row.get('id') is not None else row['path']
       for _, _, row, _ in samples])
  return ([(label, caption, png) for (_, label, _, png), caption in zip(samples, captions)],
          uniform)


def _iso(epoch: float) -> str:
  return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(
      timespec='seconds')
