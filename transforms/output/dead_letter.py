"""The dead letter, Beam-free: `_dead_letter.jsonl` (one row per failure, naming the file,
record index and byte offset) and `_dead_letter.tfrecord` (the failed records' own bytes,
to replay). Failure rows are made where things fail (`progress.Tally.fail`, the manifest's
name collisions); this module only writes them.

With memory flat however many records fail (a whole corrupt bucket): workers write their
failures, with the records' bytes, as sorted runs (`FailureWriter`,
transforms/output/sorted_runs.py), and one worker streams the runs, merged, into the two
files (`write_dead_letter`). That worker's work grows with the failures, not the images
(docs/scale.md).
"""

from __future__ import annotations

import collections
import itertools
from typing import Iterable, List

import orjson
import pyarrow as pa

from transforms import errors
from transforms.inputs import record_ranges
from transforms.inputs import tfrecord
from transforms.output import export_config
from transforms.output import manifest as manifest_lib
from transforms.output import naming
from transforms.output import root_files
from transforms.output import sorted_runs

FAILURE_SCHEMA = pa.schema([
    ('key', pa.string()), ('row', pa.binary()), ('payload', pa.binary()),
    ('images', pa.int64()), ('reason', pa.string()),
])
# A failed record's bytes ride in its run's batches: small batches keep the merge's
# memory (one batch per open run) low even for big records.
_BATCH_ROWS = 16
_FAN_IN = 16
FIRST_FAILURES = 20


def sort_key(failure: errors.Failure) -> str:
  """Orders failures by file, record, image and reason; a record's failures share the
  key's part before its second NUL."""
  index = -1 if failure.index is None else failure.index
  return (f'{failure.path or ""}\0{index + 1:020d}\0{failure.n or 0:020d}\0'
          f'{failure.reason}')


def _record_key(key: str) -> str:
  return key[:key.index('\0', key.index('\0') + 1)]


class FailureWriter:
  """A worker's failures as sorted runs. Records that failed after decoding are fetched
  again from their source by offset, so they can be replayed; framing damage has no
  record to keep (`replayable: false`)."""

  def __init__(self, config: export_config.ExportConfig):
    self._config = config
    root = root_files.OutputRoot(config.output, config.read.storage_options)
    self._runs = sorted_runs.RunWriter(root, FAILURE_SCHEMA, group_rows=_BATCH_ROWS,
                                       prefix='dead-letter')

  def add(self, failure: errors.Failure) -> None:
    payload = failure.payload
    if payload is None and failure.stage != 'read' and failure.offset is not None:
      payload = record_ranges.fetch_record(failure.path, failure.offset, self._config.read)
    row = manifest_lib.manifest_line(failure.to_row())
    self._runs.add((sort_key(failure), row, payload, failure.images, failure.reason),
                   len(row) + len(payload or b'') + 64)

  def flush(self) -> List[sorted_runs.Run]:
    return self._runs.flush()

  def discard(self) -> None:
    self._runs.discard()


def write_dead_letter(runs: Iterable[sorted_runs.Run], config: export_config.ExportConfig) -> dict:
  """Streams the failure runs, merged, into `_dead_letter.jsonl` and the failed records'
  bytes (once per record, in the same order) into `_dead_letter.tfrecord`."""
  root = root_files.OutputRoot(config.output, config.read.storage_options)
  by_reason = collections.Counter()
  first: List[dict] = []
  merged = sorted_runs.merged(root, list(runs), FAILURE_SCHEMA, fan_in=_FAN_IN,
                              group_rows=_BATCH_ROWS)
  with root.open_write(naming.DEAD_LETTER_ROWS) as rows_out, \
      root.open_write(naming.DEAD_LETTER_RECORDS) as records_out:
    records = tfrecord.TFRecordWriter(records_out)
    for _, group in itertools.groupby(merged, key=lambda entry: _record_key(entry[0])):
      group = list(group)
      payload = next((p for _, _, p, _, _ in group if p is not None), None)
      if payload is not None:
        records.write(payload)
      for _, line, _, images, reason in group:
        row = orjson.loads(line)
        row['replayable'] = payload is not None
        rows_out.write(manifest_lib.manifest_line(row))
        by_reason[reason] += images
        if len(first) < FIRST_FAILURES:
          first.append(row)
    records.close()
  return {'failed': sum(by_reason.values()), 'failed_by_reason': dict(by_reason),
          'first_failures': [_failure_line(r) for r in first],
          'first_failure_rows': first}


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
