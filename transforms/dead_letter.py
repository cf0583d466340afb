"""The dead letter, Beam-free: `_dead_letter.jsonl` (one row per failure, naming the file,
record index and byte offset) and `_dead_letter.tfrecord` (the failed records' own bytes,
to replay). Failure rows are made where things fail (`progress.Tally.fail`, the manifest's
name collisions); this module only writes them.
"""

from __future__ import annotations

import collections
import io
from typing import TYPE_CHECKING, Dict, Iterable, Tuple

from transforms import errors
from transforms import manifest as manifest_lib
from transforms import naming
from transforms import output_root
from transforms import read
from transforms import tfrecord

if TYPE_CHECKING:  # types only: export imports this module's users
  from transforms import export


def _jsonl(rows: Iterable[dict]) -> bytes:
  return ''.join(manifest_lib.manifest_line(r) for r in rows).encode('utf-8')


def write_dead_letter(failures: Iterable[errors.Failure],
                      config: 'export.ExportConfig') -> dict:
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
  root.write(naming.DEAD_LETTER_ROWS, _jsonl(rows))
  records = io.BytesIO()
  with tfrecord.TFRecordWriter(records) as writer:
    for key in sorted(payloads):
      writer.write(payloads[key])
  root.write(naming.DEAD_LETTER_RECORDS, records.getvalue())
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
