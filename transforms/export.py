"""The export's per-range work, Beam-free: its config, and `export_range`.

`export_range` reads, decodes, renders and writes one record range, on a worker, and
returns its manifest runs and failures; `ptransforms.ExportImages` runs it over every
range and then, once each, `manifest.write_manifest`, `dead_letter.write_dead_letter` and
`report.write_report`.

Outputs under the root: one file per image, and beside them the `_manifest/` parts,
`_dead_letter.jsonl`, `_dead_letter.tfrecord`, `_report.json`, and `_SUCCESS` last, only
when failures <= max_failures. Pixels never cross a shuffle: each worker reads, decodes,
encodes and writes its own record ranges; manifest rows go to sorted run files that
workers merge by path range (transforms/manifest.py).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Optional, Tuple, Union

import cv2

from transforms import checksums
from transforms import decode
from transforms import errors
from transforms import manifest as manifest_lib
from transforms import naming
from transforms import output_root
from transforms import progress
from transforms import read
from transforms import record_layout
from transforms import render
from transforms import runs as runs_lib
from transforms import shards as shards_lib
from transforms import tfrecord



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
  # The manifest parts' format (transforms/manifest.py): 'jsonl' or 'parquet'.
  manifest_format: str = 'jsonl'
  manifest_part_rows: int = manifest_lib.ROWS_PER_PART
  # Each row's checksum of its file (transforms/checksums.py): sha256, crc32c or blake3.
  checksum: str = 'sha256'
  # Files of a folder input skipped at launch: they hold no TFRecord (read.list_inputs).
  skipped_inputs: Tuple[str, ...] = ()
  # Whether the root holds a manifest (or a commit a killed run left) when the run
  # starts, under its claim (`manifest.any_previous`): without one, the job has no
  # previous rows to read and skips that step's two stages.
  previous_manifest: bool = True
  # --pack tar|parquet and the shards' bounds (transforms/shards.py); 'files' writes a
  # file per image.
  shards: shards_lib.ShardSpec = shards_lib.ShardSpec()

  def __post_init__(self):
    if not self.patterns and not self.incremental:
      raise errors.ConfigError('no input given; pass --input PATTERN')
    if not self.output:
      raise errors.ConfigError('no output given; pass --output URL')
    if self.max_failures < 0:
      raise errors.ConfigError('--max_failures must be 0 or more')
    if self.manifest_format not in manifest_lib.FORMATS:
      raise errors.ConfigError(f'--manifest_format must be one of '
                               f'{", ".join(manifest_lib.FORMATS)}')
    if self.checksum not in checksums.ALGORITHMS:
      raise errors.ConfigError(f'--checksum must be one of '
                               f'{", ".join(checksums.ALGORITHMS)}')
    if self.manifest_part_rows < 1:
      raise errors.ConfigError('--manifest_part_rows must be 1 or more')
    if self.overwrite and (self.skip_existing or self.incremental):
      raise errors.ConfigError(
          '--overwrite replaces the output; it does not go with --skip_existing or '
          '--incremental, which keep it')


class RangeWorker:
  """What a worker holds to export record ranges: the output root, the image decoder
  (a child process when isolated), the record decoders, the namer and the progress
  sender. Made once per worker (`DoFn.setup`), released by `close()`."""

  def __init__(self, config: ExportConfig):
    cv2.setNumThreads(0)  # the runner's workers are the parallelism; no pool per worker
    self.config = config
    self.root = output_root.OutputRoot(config.output, config.read.storage_options,
                                       store_crc32c=config.checksum == 'crc32c')
    self.decoder = decode.make_decoder(config.image)
    # Pixels stay in the record where they sit misaligned: `normalize` reads them there.
    self.records = record_layout.KeysDecoder((config.image,) + config.more_images,
                                             self.decoder, in_place=True)
    self.progress = progress.ProgressSender(config.progress)
    self.namer = naming.Namer(config.render)

  def close(self) -> None:
    self.progress.close()
    self.decoder.close()


def export_range(file_range: tfrecord.FileRange, worker: RangeWorker,
                 tally: progress.Tally
                 ) -> Iterator[Union[runs_lib.Run, errors.Failure, shards_lib.Shard]]:
  """Exports every image of one record range: its files (or, with --pack, its shards)
  are written, and it yields the range's sorted manifest runs (`runs_lib.Run`), a
  Failure per image or record that failed, and each shard written. Counts go to
  `tally`.

  Records are taken in chunks (`_chunks`), and each stage runs over a whole chunk before
  the next starts: decode, then name and encode, then write, then manifest rows, so each
  stage's code and data stay in the core's caches (docs/benchmarks.md).
  """
  runs = manifest_lib.EntryWriter(worker.root, worker.config.manifest_format,
                                 worker.config.manifest_part_rows)
  slots = read.read_slots(read.read_range(file_range, worker.config.read), tally)
  packer = _Packer(file_range, worker) if worker.config.shards.packed else None
  try:
    for chunk in _chunks(slots, CHUNK_RECORDS, CHUNK_BYTES):
      images = []
      for item in record_layout.decode_records(chunk, worker.records, tally):
        if isinstance(item, errors.Failure):
          yield item
        else:
          images.append(item)
      rendered = yield from _render(images, worker, runs, tally)
      if packer is not None:
        yield from packer.add(rendered, runs, tally)
        continue
      written = yield from _write(rendered, worker, tally)
      _add_rows(written, worker, runs, tally)
    if packer is not None:
      yield from packer.finish(runs, tally)
  finally:
    if packer is not None:
      packer.writer.abort()  # a range that failed leaves no shard under a final name
  yield from runs.flush()
  worker.progress.count(progress.RANGES)  # the ETA starts after the first


def _render(images, worker: RangeWorker, runs: manifest_lib.EntryWriter,
            tally: progress.Tally):
  """(image, name, Rendered) for the images to write; --skip_existing's are recorded,
  failures yielded."""
  config = worker.config
  rendered = []
  for image in images:
    stage = 'name'
    try:
      name = worker.namer.name(image)
      # With --pack, --skip_existing keeps whole shards (shards.ShardWriter).
      row = (manifest_lib.existing_row(image, name, worker.root, config)
             if config.skip_existing and not config.shards.packed else None)
      if row is not None:
        runs.add(manifest_lib.SKIPPED, row)
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


def _add_rows(written, worker: RangeWorker, runs: manifest_lib.EntryWriter,
              tally: progress.Tally) -> None:
  rows = [manifest_lib.manifest_row(image, name, result, worker.config)
          for image, name, result in written]
  runs.add_all(manifest_lib.WRITTEN, rows, in_key_order=True)
  tally.add('images_written', len(rows))
  tally.add('bytes_written', sum(row['bytes'] for row in rows))
  worker.progress.count('written', len(written))


class _Packer:
  """One record range's shards (`shards.ShardWriter`); its samples' manifest rows are
  added as each shard is finished, naming the shard and the member."""

  def __init__(self, file_range: tfrecord.FileRange, worker: RangeWorker):
    self.worker = worker
    config = worker.config
    self._template = config.render.name_template
    self.writer = None
    self._range = file_range

  def add(self, rendered, runs: manifest_lib.EntryWriter, tally: progress.Tally):
    config = self.worker.config
    for image, name, result in rendered:
      folder = shards_lib.folder_of(name, self._template)
      if self.writer is None:
        self.writer = shards_lib.ShardWriter(
            self.worker.root, config.shards, self._range.path, folder,
            skip_existing=config.skip_existing)
      key, ext = shards_lib.sample_key(name, folder)
      features = image.features
      label = features.get(config.render.label_key) if config.render.label_key else None
      meta = shards_lib.sample_meta(
          id_value=features.get(config.render.id_key) if config.render.id_key else None,
          label=label, label_name=naming.label_name(label, config.render.label_names),
          source=image.ref.path, index=image.ref.index, offset=image.ref.offset,
          n=image.n, key=image.key)
      sample = shards_lib.Sample(key, ext, result.data, meta,
                                 label if isinstance(label, int) else None)
      try:
        for shard, placed in self.writer.add((image, name, result), sample):
          yield shard
          self._add_rows(shard, placed, runs, tally)
      except errors.UnrecordError as e:
        yield tally.fail(_located(e, image), 'write', n=image.n)

  def finish(self, runs: manifest_lib.EntryWriter, tally: progress.Tally):
    if self.writer is None:
      return
    for shard, placed in self.writer.finish():
      yield shard
      self._add_rows(shard, placed, runs, tally)

  def _add_rows(self, shard: shards_lib.Shard, placed, runs: manifest_lib.EntryWriter,
                tally: progress.Tally) -> None:
    worker, tar = self.worker, shard.name.endswith('.tar')
    rows = []
    for (image, name, result), member, where in placed:
      row = manifest_lib.manifest_row(image, name, result, worker.config)
      row.update(path=shards_lib.member_path(shard.name, member), shard=shard.name,
                 member=member, member_offset=where if tar else None,
                 shard_row=None if tar else where)
      rows.append(row)
    kind = manifest_lib.SKIPPED if shard.kept else manifest_lib.WRITTEN
    runs.add_all(kind, rows)
    if shard.kept:
      tally.add('images_skipped', len(rows))
      worker.progress.count('skipped', len(rows))
      return
    tally.add('images_written', len(rows))
    tally.add('bytes_written', sum(row['bytes'] for row in rows))
    tally.add('shards_written')
    worker.progress.count('written', len(rows))


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


