"""unrecord's Beam transforms: the one module of the library that imports Beam.

Each DoFn only wraps a Beam-free function (setup/teardown, tagging outputs, metrics):

  PlanRanges        patterns -> FileRange          input_files.expand_patterns,
                                                    record_ranges.plan_file
  ReadImageRecords  patterns -> (RecordRef, bytes)  record_ranges.read_range,
                                                    record_ranges.read_slots
  DecodeImages      records -> DecodedImage         layout_decoder.decode_records
  ExportImages      patterns -> files, manifest, dead letter, report
                                                    export.export_range, then
                                                    manifest.read_previous (per
                                                    previous part),
                                                    manifest.write_part (per part),
                                                    manifest.commit,
                                                    dead_letter.write_dead_letter,
                                                    report.write_report

ExportImages is the job: PlanRanges, then `export.export_range` on each range, which
reads, decodes, renders and writes in one step, so pixels never cross the runner; it
runs the same functions ReadImageRecords and DecodeImages do, fused. Every transform's
failures leave through the `dead_letter` output as `errors.Failure` rows; metrics are in
the `unrecord` namespace.
"""

from __future__ import annotations

import operator
import time
from typing import Dict, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from transforms import errors
from transforms import export
from transforms import progress
from transforms.images import decode
from transforms.images import layout_decoder
from transforms.inputs import input_files
from transforms.inputs import record_ranges
from transforms.output import dead_letter
from transforms.output import export_config
from transforms.output import manifest as manifest_lib
from transforms.output import portability
from transforms.output import report
from transforms.output import root_files
from transforms.output import shards as shards_lib

NAMESPACE = 'unrecord'
DEAD_LETTER = 'dead_letter'
SPANS = 'spans'
SHARDS = 'shards'  # with --pack: each shards.Shard written
REPAIRS = 'repairs'  # what manifest.read_previous rebuilt of a damaged previous manifest


def _count(counts: Dict[str, int]) -> None:
  """A worker's tally as the runner's metrics."""
  for name, value in counts.items():
    Metrics.counter(NAMESPACE, name).inc(value)


def _tagged(item):
  """A Failure to the dead-letter output, a Shard to SHARDS; anything else to the main
  one."""
  if isinstance(item, errors.Failure):
    return beam.pvalue.TaggedOutput(DEAD_LETTER, item)
  if isinstance(item, shards_lib.Shard):
    return beam.pvalue.TaggedOutput(SHARDS, item)
  return item


class _WithProgress(beam.DoFn):
  """A DoFn that sends live progress (local runs) and counts into a Tally."""

  def __init__(self, address: Optional[progress.Address]):
    self._address = address

  def setup(self):
    self._tally = progress.Tally(progress.process_sender(self._address))

  def finish_bundle(self):
    self._tally.sender.flush()

  def teardown(self):
    self._tally.sender.close()


def _spread(pcoll, label: str, spread: bool):
  """`pcoll` through a Reshuffle, so the runner spreads what follows over its workers;
  as it is when there is one worker in this process to run it (`spread` False): the
  Reshuffle would only cost the graph, the translation and a stage of its own (five
  transforms each, a local small run's largest fixed cost after Beam's import)."""
  return pcoll | label >> beam.Reshuffle() if spread else pcoll


def _expand_patterns(_, patterns, storage_options):
  return input_files.expand_patterns(patterns, storage_options)


class PlanRanges(beam.PTransform):
  """Input patterns -> FileRange, spread over workers so the runner can balance them.

  Large uncompressed files are cut into record ranges by a header-only index pass, so one
  big file spreads over all workers. `spread=False` leaves out the Reshuffles that do the
  spreading, for a runner with one worker (see `_spread`).
  """

  def __init__(self, patterns: Sequence[str],
               config: record_ranges.ReadConfig = record_ranges.ReadConfig(),
               spread: bool = True):
    super().__init__()
    self._patterns = tuple(input_files.split_patterns(patterns))
    if not self._patterns:
      raise errors.ConfigError('reading records needs at least one input pattern')
    self._config = config
    self._spread = spread

  def expand(self, pbegin):
    files = (
        pbegin
        | 'Start' >> beam.Impulse()
        | 'ExpandPatterns' >> beam.FlatMap(_expand_patterns, self._patterns,
                                           self._config.storage_options))
    # InputFile
    ranges = (
        _spread(files, 'DistributeFiles', self._spread)
        | 'PlanRanges' >> beam.FlatMap(record_ranges.plan_file, self._config))
    # FileRange
    return _spread(ranges, 'DistributeRanges', self._spread)


class _ReadRangeFn(_WithProgress):
  """FileRange -> (RecordRef, bytes); framing damage goes to the dead letter."""

  def __init__(self, config: record_ranges.ReadConfig, address: Optional[progress.Address]):
    super().__init__(address)
    self._config = config

  def process(self, file_range):
    for item in record_ranges.read_slots(
        record_ranges.read_range(file_range, self._config), self._tally):
      yield _tagged(item)
    _count(self._tally.take())


class ReadImageRecords(beam.PTransform):
  """Input patterns -> `(RecordRef, bytes)` records, read range by range (PlanRanges).

  Outputs: `records` and `dead_letter` (Failure).
  """

  def __init__(self, patterns: Sequence[str],
               config: record_ranges.ReadConfig = record_ranges.ReadConfig(),
               progress_address: Optional[progress.Address] = None):
    super().__init__()
    self._plan = PlanRanges(patterns, config)
    self._config = config
    self._progress = progress_address

  def expand(self, pbegin):
    return (
        pbegin
        | 'PlanRanges' >> self._plan
        # FileRange
        | 'ReadRanges' >> beam.ParDo(_ReadRangeFn(self._config, self._progress))
        .with_outputs(DEAD_LETTER, main='records'))


class _DecodeFn(_WithProgress):
  """(RecordRef, bytes) -> DecodedImage per image; undecodable records go to the dead
  letter with their bytes."""

  def __init__(self, spec: decode.ImageSpec, address: Optional[progress.Address]):
    super().__init__(address)
    self._spec = spec

  def setup(self):
    super().setup()
    self._decoder = decode.make_decoder(self._spec)
    self._records = layout_decoder.KeysDecoder((self._spec,), self._decoder)

  def teardown(self):
    super().teardown()
    self._decoder.close()

  def process(self, record):
    for item in layout_decoder.decode_records((record,), self._records, self._tally):
      yield _tagged(item)
    _count(self._tally.take())


class DecodeImages(beam.PTransform):
  """`(RecordRef, bytes)` -> DecodedImage (one per image; batches are split).

  Outputs: `images` and `dead_letter` (Failure rows with the record's original bytes).
  """

  def __init__(self, spec: decode.ImageSpec = decode.ImageSpec(),
               progress_address: Optional[progress.Address] = None):
    super().__init__()
    self._spec = spec
    self._progress = progress_address

  def expand(self, records):
    # (RecordRef, bytes)
    return records | 'Decode' >> beam.ParDo(_DecodeFn(self._spec, self._progress)) \
        .with_outputs(DEAD_LETTER, main='images')


class _ExportRangeFn(beam.DoFn):
  """FileRange -> manifest runs (`export.export_range`); each image of the range is
  written. Also yields, tagged SPANS, the (start, end) wall-clock seconds of each range's
  work, from which the report tells the workers' time from start-up and wind-down."""

  def __init__(self, config: export_config.ExportConfig):
    self._config = config

  def setup(self):
    self._worker = export.RangeWorker(self._config)
    self._tally = progress.Tally(self._worker.progress)

  def finish_bundle(self):
    self._worker.progress.flush()

  def teardown(self):
    self._worker.close()

  def process(self, file_range):
    started = time.time()
    for item in export.export_range(file_range, self._worker, self._tally):
      yield _tagged(item)
    _count(self._tally.take())
    yield beam.pvalue.TaggedOutput(SPANS, (started, time.time()))


class _FailureRunsFn(beam.DoFn):
  """Failure -> sorted dead-letter runs, one set per bundle (dead_letter.FailureWriter,
  made once per DoFn instance: `flush` hands its runs over and starts afresh)."""

  def __init__(self, config: export_config.ExportConfig):
    self._config = config

  def setup(self):
    self._writer = dead_letter.FailureWriter(self._config)

  def start_bundle(self):
    self._writer.discard()  # what a failed bundle held: its retry adds it again

  def process(self, failure):
    self._writer.add(failure)

  def finish_bundle(self):
    for run in self._writer.flush():
      yield GlobalWindows.windowed_value(run)


def _previous_files(_, config: export_config.ExportConfig):
  return manifest_lib.previous_files(config)


class _PreviousRowsFn(beam.DoFn):
  """manifest.PreviousFile -> its rows' runs; what it repaired to the REPAIRS output."""

  def __init__(self, config: export_config.ExportConfig):
    self._config = config

  def process(self, task):
    runs, repair = manifest_lib.read_previous(task, self._config)
    yield from runs
    if repair is not None:
      yield beam.pvalue.TaggedOutput(REPAIRS, repair)


def _plan_parts(_, runs, rows_per_part: int):
  return manifest_lib.plan_parts(runs, rows_per_part)


class _WritePartFn(beam.DoFn):
  """manifest.Part -> the part's summary; its name collisions become dead-letter runs."""

  def __init__(self, config: export_config.ExportConfig):
    self._config = config

  def process(self, part, runs):
    collisions = dead_letter.FailureWriter(self._config)
    names = portability.FoldWriter(
        root_files.OutputRoot(self._config.output, self._config.read.storage_options))
    summary = manifest_lib.write_part(part, runs, self._config, collisions.add,
                                      on_paths=names.add)
    summary['failure_runs'] = collisions.flush()
    summary['name_runs'] = names.flush()
    yield summary


def _name_runs(summary: dict):
  return summary['name_runs']


def _plan_name_ranges(_, runs):
  return portability.plan_ranges(runs)


def _check_names(bounds, config: export_config.ExportConfig, runs) -> dict:
  root = root_files.OutputRoot(config.output, config.read.storage_options)
  return portability.check_range(bounds, runs, root)


def _finish(_, config: export_config.ExportConfig, parts, failure_runs, spans, repairs,
            names=(), shards=()) -> dict:
  """The job's last step, once: with --pack the shard index, then commits the manifest,
  then writes the dead letters, then the report (with `_SUCCESS`). One step, not three:
  each step the runner schedules on its own costs a local run about 0.1 s of start-up
  (docs/benchmarks.md). `parts` is iterated, never held: a part's summary carries up to
  384 sample rows."""
  shard_summary, kept_files = None, ()
  if config.shards.packed:
    root = root_files.OutputRoot(config.output, config.read.storage_options)
    shard_summary = shards_lib.write_index(root, list(shards),
                                           manifest_lib.keeps_previous(config))
    kept_files = [shards_lib.INDEX] + [e['url'] for e in shards_lib.read_index(root)]
  manifest = manifest_lib.commit(parts, config, list(repairs), kept_files)
  if shard_summary is not None:
    manifest['shards'] = shard_summary
  for name, change in manifest['count_corrections'].items():
    if change > 0:
      Metrics.counter(NAMESPACE, name).inc(change)
    elif change < 0:
      Metrics.counter(NAMESPACE, name).dec(-change)
  collisions = [run for part in parts for run in part['failure_runs']]
  dead_letter_summary = dead_letter.write_dead_letter(list(failure_runs) + collisions, config)
  return {'manifest': manifest, 'dead_letter': dead_letter_summary,
          'report': report.write_report(config, manifest, dead_letter_summary, spans,
                                        names=portability.combine(list(names)))}


class ExportImages(beam.PTransform):
  """The whole job: patterns -> image files and metadata under `config.output`.

  Returns a dict of PCollections: `dead_letter` (Failure), `manifest` (the dict
  `manifest.commit` returns) and `report` (the `_report.json` dict). `spread=False`: the
  runner has one worker, in this process; the graph leaves out the Reshuffles that only
  spread work over workers (`_spread`), and does the same work.
  """

  def __init__(self, config: export_config.ExportConfig, spread: bool = True):
    super().__init__()
    self._config = config
    self._spread = spread

  def expand(self, pbegin):
    config, spread = self._config, self._spread
    ranges = pbegin | 'PlanRanges' >> PlanRanges(config.patterns, config.read, spread)
    # FileRange
    exported = ranges | 'Export' >> beam.ParDo(_ExportRangeFn(config)).with_outputs(
        DEAD_LETTER, SPANS, SHARDS, main='runs')
    # sorted_runs.Run of sorted manifest entries; Failure rows; (start, end) per range;
    # with --pack, a shards.Shard per shard written
    # One element that starts each step planned from what the export wrote.
    start = pbegin | 'Start' >> beam.Impulse()
    runs = exported.runs
    repairs = ()
    if config.previous_manifest:
      previous = (
          _spread(start | 'ListPrevious' >> beam.FlatMap(_previous_files, config),
                  'SpreadPrevious', spread)
          | 'PreviousRuns' >> beam.ParDo(_PreviousRowsFn(config)).with_outputs(
              REPAIRS, main='runs'))
      # sorted_runs.Run of the previous manifest's rows; a dict per part rebuilt from the files
      runs = (exported.runs, previous.runs) | 'AllRuns' >> beam.Flatten()
      repairs = beam.pvalue.AsList(previous[REPAIRS])
    # Every worker merges one path range of every run into one part: no worker handles
    # more than a part's rows, and the rows never pass through the runner.
    parts = (
        _spread(start | 'PlanParts' >> beam.FlatMap(_plan_parts, beam.pvalue.AsList(runs),
                                                    config.manifest_part_rows),
                'SpreadParts', spread)
        | 'WriteParts' >> beam.ParDo(_WritePartFn(config), beam.pvalue.AsList(runs)))
    # a write_part summary per part
    # Names a case-insensitive disk or Windows would lose: the parts' paths, sorted by
    # fold, checked a fold-key range per task (transforms/output/portability.py).
    name_runs = parts | 'NameRuns' >> beam.FlatMap(_name_runs)
    # sorted_runs.Run of (fold, path)
    names = (
        _spread(start | 'PlanNameRanges' >> beam.FlatMap(_plan_name_ranges,
                                                         beam.pvalue.AsList(name_runs)),
                'SpreadNameRanges', spread)
        | 'CheckNames' >> beam.Map(_check_names, config, beam.pvalue.AsList(name_runs)))
    # a portability.check_range summary per range
    failure_runs = exported.dead_letter | 'FailureRuns' >> beam.ParDo(
        _FailureRunsFn(config))
    finished = start | 'CommitAndReport' >> beam.Map(
        _finish, config, beam.pvalue.AsIter(parts), beam.pvalue.AsList(failure_runs),
        beam.pvalue.AsList(exported[SPANS]), repairs, beam.pvalue.AsList(names),
        beam.pvalue.AsList(exported[SHARDS]))
    # the manifest.commit, write_dead_letter and _report.json dicts
    merged = finished | 'Manifest' >> beam.Map(operator.itemgetter('manifest'))
    report_dict = finished | 'Report' >> beam.Map(operator.itemgetter('report'))
    return {'dead_letter': exported.dead_letter, 'manifest': merged, 'report': report_dict}
