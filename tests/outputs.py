"""Reading an export's outputs as a user does, with no unrecord code: the manifest's
parts by glob (`_manifest/part-*`, in name order), JSON or Parquet."""

from __future__ import annotations

import glob
import json
import os
from typing import List


CHECKSUMS = ('sha256', 'crc32c', 'blake3')


def manifest_parts(root) -> List[str]:
  """The part files, in order; checked against `_manifest/_parts.json`."""
  folder = os.path.join(str(root), '_manifest')
  parts = sorted(glob.glob(os.path.join(folder, 'part-*')))
  with open(os.path.join(folder, '_parts.json'), encoding='utf-8') as f:
    listed = [p['name'] for p in json.load(f)['parts']]
  assert [os.path.basename(p) for p in parts] == listed, (parts, listed)
  return parts


def manifest_bytes(root) -> bytes:
  """The JSONL parts, concatenated: the whole manifest, sorted by path."""
  data = b''
  for part in manifest_parts(root):
    assert part.endswith('.jsonl'), part
    with open(part, 'rb') as f:
      data += f.read()
  return data


def manifest_rows(root) -> List[dict]:
  """Every manifest row, in path order, from JSONL or Parquet parts."""
  parts = manifest_parts(root)
  if parts and parts[0].endswith('.parquet'):
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    # The checksum columns a row does not use are null in Parquet and absent from a
    # JSONL row (docs/output.md, "The manifest"): left out, rows of both formats compare equal.
    return [{k: v for k, v in row.items() if v is not None or k not in CHECKSUMS}
            for part in parts for row in pq.read_table(part).to_pylist()]
  return [json.loads(line) for line in manifest_bytes(root).splitlines()]
