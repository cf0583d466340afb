"""ExportImages: the whole job as one composite transform, read -> decode -> write.

Outputs under the root: one file per image, and beside them (never in subfolders)
`_manifest.jsonl`, `_dead_letter.jsonl`, `_dead_letter.tfrecord`, `_report.json`, and
`_SUCCESS` last, only when failures <= max_failures. Pixels never cross a shuffle: each
worker reads, decodes, encodes and writes its own records; only small rows are grouped.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import io
import json
import time
from typing import Dict, Iterable, List, Optional, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms import decode
from transforms import errors
from transforms import image_formats
from transforms import incremental
from transforms import progress
from transforms import read
from transforms import render
from transforms import report as report_lib
from transforms import sink
from transforms import tfrecord

SKIPPED = 'skipped'
MANIFEST = '_manifest.jsonl'
DEAD_LETTER_ROWS = '_dead_letter.jsonl'
DEAD_LETTER_RECORDS = '_dead_letter.tfrecord'
REPORT = '_report.json'
REPORT_HTML = '_report.html'
SUCCESS = '_SUCCESS'
NAMESPACE = read.METRICS_NAMESPACE


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """The resolved job: inputs, output root, and how each image is read and rendered."""
  patterns: Tuple[str, ...]
  output: str
  read: read.ReadConfig = read.ReadConfig()
  image: decode.ImageSpec = decode.ImageSpec()
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

  def __post_init__(self):
    if not self.patterns and not self.incremental:
      raise errors.ConfigError('no input given; pass --input PATTERN')
    if not self.output:
      raise errors.ConfigError('no output given; pass --output URL')
    if self.max_failures < 0:
      raise errors.ConfigError('--max_failures must be 0 or more')


def manifest_row(image: decode.DecodedImage, name: str, rendered: render.Rendered,
                 config: ExportConfig) -> dict:
  """The `_manifest.jsonl` row for one written image."""
  features = image.features
  label_key, id_key = config.render.label_key, config.render.id_key
  label = features.get(label_key) if label_key else None
  names = config.render.label_names
  return {
      'path': name,
      'source': image.ref.path,
      'index': image.ref.index,
      'offset': image.ref.offset,
      'n': image.n,
      'id': features.get(id_key) if id_key else None,
      'label': label,
      'label_name': (names[label] if names and isinstance(label, int) and
                     0 <= label < len(names) else None),
      'bytes': len(rendered.data),
      'sha256': sink.sha256(rendered.data),
      'shape_in': list(image.pixels.shape if image.pixels is not None
                       else image.stored_shape),
      'dtype_in': image.source_dtype,
      'shape_out': list(rendered.shape),
      'dtype_out': rendered.dtype,
      'format': config.render.encode.format,
      'encoder': rendered.encoder,
      'passthrough': rendered.passthrough,
      'normalization': list(rendered.steps),
      'value_range': list(rendered.value_range) if rendered.value_range else None,
  }


def existing_row(image: decode.DecodedImage, name: str, root: sink.OutputRoot,
                 config: ExportConfig) -> dict:
  """A manifest row for an image left in place by --skip_existing, from the file itself.

  `write_manifest` prefers the previous run's row for the same path when there is one.
  """
  data = root.read(name)
  try:
    shape, dtype = image_formats.check_encoded(data, None, config.image.max_pixels)
  except errors.UnrecordError:
    shape, dtype = None, None
  rendered = render.Rendered(data, tuple(shape or ()), dtype, ('existing',), 'existing',
                             False, None)
  row = manifest_row(image, name, rendered, config)
  row['shape_out'] = list(shape) if shape else None
  return row


def _failure(error: errors.UnrecordError, stage: str, image: decode.DecodedImage
             ) -> errors.Failure:
  error.at(image.ref.path, image.ref.index, image.ref.offset)
  return errors.Failure.from_error(error, stage, n=image.n)


class _WriteImageFn(beam.DoFn):
  """DecodedImage -> (path, manifest line); the image file is written as a side effect.

  Rows travel as their JSON line, not as dicts: about 500 bytes instead of several KB,
  which is what the manifest's collection holds per image.
  """

  def __init__(self, config: ExportConfig):
    self._config = config
    self._written = Metrics.counter(NAMESPACE, 'images_written')
    self._skipped = Metrics.counter(NAMESPACE, 'images_skipped')
    self._bytes = Metrics.counter(NAMESPACE, 'bytes_written')

  def setup(self):
    self._root = sink.OutputRoot(self._config.output, self._config.read.storage_options)
    self._decoder = read.make_decoder(self._config.image)
    self._progress = progress.ProgressSender(self._config.progress)

  def finish_bundle(self):
    self._progress.flush()

  def teardown(self):
    self._progress.close()
    self._decoder.close()

  def process(self, image: decode.DecodedImage):
    config = self._config
    stage = 'name'
    try:
      name = render.output_name(image, config.render)
      if config.skip_existing and self._root.exists(name):
        self._skipped.inc()
        self._progress.count('skipped')
        yield beam.pvalue.TaggedOutput(SKIPPED, existing_row(image, name, self._root,
                                                             config))
        return
      stage = 'encode'
      rendered = render.render(image, config.render, self._decoder)
      stage = 'write'
      self._root.write(name, rendered.data)
    except errors.UnrecordError as e:
      self._progress.count('failed')
      Metrics.counter(NAMESPACE, f'failed_{e.reason}').inc()
      yield beam.pvalue.TaggedOutput(read.DEAD_LETTER, _failure(e, stage, image))
      return
    self._progress.count('written')
    self._written.inc()
    self._bytes.inc(len(rendered.data))
    yield name, manifest_line(manifest_row(image, name, rendered, config))


def _source_key(row: dict) -> Tuple[str, int, int]:
  return row['source'], row['index'], row['n']


class _ResolveCollisionsFn(beam.DoFn):
  """(path, lines) -> one (path, line) per path; other images that took it are dead-lettered.

  Replayed bundles write the same image twice: same source, one row. Different images
  with one name: the file on disk holds exactly one of them (writes are atomic); that
  one keeps its row and every other gets `name_collision`.
  """

  def __init__(self, config: ExportConfig):
    self._config = config

  def setup(self):
    self._root = sink.OutputRoot(self._config.output, self._config.read.storage_options)

  def process(self, element):
    name, lines = element
    unique = sorted(set(lines))
    if len(unique) == 1:  # the usual case: no row needs parsing
      yield name, unique[0]
      return
    by_source = {}
    for row in sorted((json.loads(line) for line in unique), key=_source_key):
      by_source.setdefault(_source_key(row), row)
    if len(by_source) == 1:
      yield name, manifest_line(next(iter(by_source.values())))
      return
    on_disk = sink.sha256(self._root.read(name))
    kept = next((r for r in by_source.values() if r['sha256'] == on_disk), None)
    if kept is not None:
      yield name, manifest_line(kept)
    others = ', '.join(f'{r["source"]} record {r["index"]}' for r in by_source.values())
    for row in by_source.values():
      if row is kept:
        continue
      Metrics.counter(NAMESPACE, f'failed_{errors.NAME_COLLISION}').inc()
      Metrics.counter(NAMESPACE, 'images_written').dec()
      yield beam.pvalue.TaggedOutput(read.DEAD_LETTER, errors.Failure(
          reason=errors.NAME_COLLISION, stage='write', path=row['source'],
          index=row['index'], offset=row['offset'], n=row['n'],
          message=f'output name {name!r} is taken by more than one image ({others}); '
          'add {id}, {index} or {n} to --name_template to tell them apart'))


def manifest_line(row: dict) -> str:
  """One `_manifest.jsonl` line (keys sorted, so equal rows give equal lines)."""
  return json.dumps(row, sort_keys=True, ensure_ascii=False) + '\n'


def _jsonl(rows: Iterable[dict]) -> bytes:
  return ''.join(manifest_line(r) for r in rows).encode('utf-8')


def write_manifest(written: Iterable[Tuple[str, str]], config: ExportConfig,
                   skipped: List[dict]) -> dict:
  """Writes `_manifest.jsonl`, sorted by path, covering written and skipped images.

  `written` holds (path, manifest line) pairs. A skipped image keeps its row from the
  previous manifest, byte for byte, when that manifest has one (a re-run over unchanged
  input rewrites an identical manifest); else (e.g. after a killed run) its row is made
  from the file found in place.
  """
  root = sink.OutputRoot(config.output, config.read.storage_options)
  previous = {}  # path -> (source, line)
  if (skipped or config.incremental) and root.exists(MANIFEST):
    for line in root.read(MANIFEST).decode('utf-8').splitlines():
      try:
        row = json.loads(line)
        previous[row['path']] = (row['source'], line + '\n')
      except (ValueError, KeyError, TypeError):
        continue
  lines = {r['path']: manifest_line(r) for r in skipped}
  lines.update({p: previous[p][1] for p in lines if p in previous})
  new = dict(written)  # path -> line; the one structure that grows with the run
  lines.update(new)
  stale = []
  if config.incremental:
    processed = {url for url, _ in config.processed}
    for path, (source, line) in previous.items():
      if path in lines:
        continue
      if source in processed:
        stale.append(path)  # its shard changed and no longer makes this image
      else:
        lines[path] = line  # an unchanged shard's image, kept from the last run
    for path in stale:
      try:
        root.fs.rm_file(root.path(path))
      except FileNotFoundError:
        pass
  paths = sorted(lines)
  root.write(MANIFEST, ''.join(lines[p] for p in paths).encode('utf-8'))
  # Totals and report samples, one parsed row at a time (nothing more is held).
  skipped_rows = {r['path']: r for r in skipped}
  sampler = report_lib.RowSampler()
  total_bytes = passthrough = 0
  for path in paths:
    if path in new:
      row = json.loads(new[path])
      total_bytes += row['bytes']
      passthrough += bool(row['passthrough'])
      sampler.add(row)
    elif path in skipped_rows:
      sampler.add(skipped_rows[path])
  return {'written': len(new), 'bytes': total_bytes, 'passthrough': passthrough,
          'stale_removed': len(stale), 'samples': sampler.chosen()}


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
  root = sink.OutputRoot(config.output, config.read.storage_options)
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
          'first_failures': [r['message'] for r in rows[:20]]}


def write_report(_, config: ExportConfig, manifest: dict, dead_letter: dict,
                 skipped: int) -> dict:
  """Writes `_report.json` and `_report.html`, removes temp debris, then `_SUCCESS` if earned."""
  root = sink.OutputRoot(config.output, config.read.storage_options)
  root.remove_temp_debris()
  finished = time.time()
  seconds = max(finished - (config.run_started or finished), 1e-9)
  success = dead_letter['failed'] <= config.max_failures
  report = {
      'output': config.output,
      'inputs': list(config.patterns),
      'written': manifest['written'],
      'passthrough': manifest['passthrough'],
      'skipped': skipped,
      'failed': dead_letter['failed'],
      'failed_by_reason': dead_letter['failed_by_reason'],
      'first_failures': dead_letter['first_failures'],
      'bytes_written': manifest['bytes'],
      'seconds': round(seconds, 3),
      'images_per_second': round(manifest['written'] / seconds, 1),
      'max_failures': config.max_failures,
      'success': success,
      'started': _iso(config.run_started or finished),
      'finished': _iso(finished),
      'options': {k: v for k, v in config.options_used},
  }
  if config.incremental:
    report['incremental'] = {'shards_processed': len(config.processed),
                             'stale_images_removed': manifest.get('stale_removed', 0)}
  root.write(REPORT, (json.dumps(report, indent=2, sort_keys=True) + '\n').encode())
  root.write(REPORT_HTML, report_lib.render_html(
      report, _thumbnails(root, manifest['samples'])).encode('utf-8'))
  if success:
    if config.incremental:
      incremental.write_state(root, config.processed)
    root.write(SUCCESS, b'')
  return report


def _thumbnails(root: sink.OutputRoot, rows: List[dict]):
  """(class, caption, thumbnail PNG) for the report's sample grid."""
  samples = []
  for row in rows:
    try:
      png = report_lib.thumbnail_png(root.read(row['path']))
    except (OSError, errors.UnrecordError):
      continue
    label = row.get('label_name') or row.get('label')
    caption = str(row['id']) if row.get('id') is not None else row['path'].split('/')[-1]
    samples.append(('' if label is None else str(label), caption, png))
  return samples


def _iso(epoch: float) -> str:
  return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(
      timespec='seconds')


def _write_manifest_once(_, config, rows, skipped):
  return write_manifest(rows, config, skipped)


def _write_dead_letter_once(_, config, failures):
  return write_dead_letter(failures, config)


class WriteImages(beam.PTransform):
  """DecodedImage -> written files.

  Outputs `rows` ((path, manifest JSON line) of each written image), `dead_letter`
  (Failure) and `skipped` (manifest row dicts of images --skip_existing left in place).
  """

  def __init__(self, config: ExportConfig):
    super().__init__()
    self._config = config

  def expand(self, images):
    written = images | 'Write' >> beam.ParDo(_WriteImageFn(self._config)).with_outputs(
        read.DEAD_LETTER, SKIPPED, main='rows')
    # (path, manifest line)
    resolved = (
        written.rows
        | 'GroupByPath' >> beam.GroupByKey()
        | 'ResolveCollisions' >> beam.ParDo(_ResolveCollisionsFn(self._config)).with_outputs(
            read.DEAD_LETTER, main='rows'))
    dead = ((written.dead_letter, resolved.dead_letter)
            | 'WriteFailures' >> beam.Flatten())
    return {'rows': resolved.rows, 'dead_letter': dead, 'skipped': written.skipped}


class ExportImages(beam.PTransform):
  """The whole job: patterns -> image files and metadata under `config.output`.

  Returns a dict of PCollections: `manifest` ((path, manifest JSON line) per written
  image), `dead_letter` (Failure), `report`.
  """

  def __init__(self, config: ExportConfig):
    super().__init__()
    self._config = config

  def expand(self, pbegin):
    config = self._config
    records = pbegin | 'ReadRecords' >> read.ReadImageRecords(
        config.patterns, config.read, config.progress)
    # (RecordRef, bytes)
    decoded = records.records | 'DecodeImages' >> read.DecodeImages(
        config.image, config.progress)
    # DecodedImage
    written = decoded.images | 'WriteImages' >> WriteImages(config)
    # manifest rows; Failure rows from every stage:
    failures = ((records.dead_letter, decoded.dead_letter, written['dead_letter'])
                | 'AllFailures' >> beam.Flatten())
    # The manifest and dead letter each end in one file, so one worker writes each. Their
    # rows arrive as side-input iterables, which runners stream in pages; a ToList would
    # make all rows one element, copied whole through every layer of the transport.
    manifest = (pbegin
                | 'StartManifest' >> beam.Create([None])
                | 'WriteManifest' >> beam.Map(
                    _write_manifest_once, config, beam.pvalue.AsIter(written['rows']),
                    beam.pvalue.AsList(written['skipped'])))
    dead_letter = (pbegin
                   | 'StartDeadLetter' >> beam.Create([None])
                   | 'WriteDeadLetter' >> beam.Map(
                       _write_dead_letter_once, config, beam.pvalue.AsIter(failures)))
    skipped = written['skipped'] | 'CountSkipped' >> beam.combiners.Count.Globally()
    report = (pbegin
              | 'Finish' >> beam.Create([None])
              | 'WriteReport' >> beam.Map(
                  write_report, config, beam.pvalue.AsSingleton(manifest),
                  beam.pvalue.AsSingleton(dead_letter), beam.pvalue.AsSingleton(skipped)))
    return {'manifest': written['rows'], 'dead_letter': failures, 'report': report}
