"""The export's per-range work, Beam-free: `RangeWorker` and `export_range`.

`export_range` reads, decodes, renders and writes one record range, on a worker, and
returns its manifest runs and failures; `ptransforms.ExportImages` runs it over every
range and then, once each, `manifest.write_manifest`, `dead_letter.write_dead_letter` and
`report.write_report`.

Outputs under the root: one file per image, and beside them the `_manifest/` parts,
`_dead_letter.jsonl`, `_dead_letter.tfrecord`, `_report.json`, and `_SUCCESS` last, only
when failures <= max_failures. Pixels never cross a shuffle: each worker reads, decodes,
encodes and writes its own record ranges; manifest rows go to sorted run files that
workers merge by path range (transforms/output/manifest.py).
"""

from __future__ import annotations

from typing import Iterable, Iterator, Union

import cv2

from transforms import errors
from transforms import progress
from transforms.images import decode
from transforms.images import layout_decoder
from transforms.images import render
from transforms.inputs import record_ranges
from transforms.inputs import tfrecord
from transforms.output import export_config
from transforms.output import manifest as manifest_lib
from transforms.output import naming
from transforms.output import root_files
from transforms.output import shards as shards_lib
from transforms.output import sorted_runs


class RangeWorker:
  """What a worker holds to export record ranges: the output root, the image decoder
  (a child process when isolated), the record decoders, the namer and the progress
  sender. Made once per worker (`DoFn.setup`), released by `close()`."""

  def __init__(self, config: export_config.ExportConfig):
    cv2.setNumThreads(0)  # the runner's workers are the parallelism; no pool per worker
    self.config = config
    self.root = root_files.OutputRoot(config.output, config.read.storage_options,
                                      store_crc32c=config.checksum == 'crc32c')
    self.decoder = decode.make_decoder(config.image)
    # Pixels stay in the record where they sit misaligned: `normalize` reads them there.
    self.records = layout_decoder.KeysDecoder((config.image,) + config.more_images,
                                              self.decoder, in_place=True)
    self.progress = progress.process_sender(config.progress)
    self.namer = naming.Namer(config.render)

  def close(self) -> None:
    self.progress.close()
    self.decoder.close()


def export_range(file_range: tfrecord.FileRange, worker: RangeWorker,
                 tally: progress.Tally
                 ) -> Iterator[Union[sorted_runs.Run, errors.Failure, shards_lib.Shard]]:
  """Exports every image of one record range: its files (or, with --pack, its shards)
  are written, and it yields the range's sorted manifest runs (`sorted_runs.Run`), a
  Failure per image or record that failed, and each shard written. Counts go to
  `tally`.

  Records are taken in chunks (`_chunks`), and each stage runs over a whole chunk before
  the next starts: decode, then name and encode, then write, then manifest rows, so each
  stage's code and data stay in the core's caches (docs/benchmarks.md).
  """
  runs = manifest_lib.EntryWriter(worker.root, worker.config.manifest_format,
                                 worker.config.manifest_part_rows)
  slots = record_ranges.read_slots(record_ranges.read_range(file_range, worker.config.read), tally)
  packer = _Packer(file_range, worker) if worker.config.shards.packed else None
  try:
    for chunk in _chunks(slots, CHUNK_RECORDS, CHUNK_BYTES):
      images = []
      for item in layout_decoder.decode_records(chunk, worker.records, tally):
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
    if packer is not None and packer.writer is not None:
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
            skip_existing=config.skip_existing, ordinal=self._range.ordinal,
            ranges=self._range.ranges)
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


