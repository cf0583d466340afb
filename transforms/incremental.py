"""Incremental materialization: which input shards are new or changed since the last run.

The state file `_unrecord_state.json` at the output root maps each processed shard's URL
to its fingerprint: its size plus whatever version the filesystem gives (GCS generation,
S3/GCS ETag, local mtime). It is rewritten only at the end of a successful run, so a run
that fails part-way leaves it as it was and the next run redoes exactly the shards that
were not finished.
"""

from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Tuple

from transforms import errors
from transforms import sink
from transforms import storage

STATE = '_unrecord_state.json'
_VERSION_KEYS = ('generation', 'etag', 'ETag', 'mtime', 'LastModified', 'md5Hash')

Fingerprint = Dict[str, object]


def fingerprint(url: str, storage_options: Optional[storage.StorageOptions] = None
                ) -> Fingerprint:
  """Size and version of one input file, as its filesystem reports them."""
  fs, path = storage.filesystem(url, storage_options)
  info = fs.info(path)
  found: Fingerprint = {'size': int(info.get('size') or 0)}
  for key in _VERSION_KEYS:
    if info.get(key) is not None:
      found[key.lower()] = str(info[key])
  return found


def read_state(root: sink.OutputRoot) -> Dict[str, Fingerprint]:
  if not root.exists(STATE):
    return {}
  try:
    state = json.loads(root.read(STATE))
    return dict(state['shards'])
  except (ValueError, KeyError, TypeError) as e:
    raise errors.ConfigError(
        f'{root.url_of(STATE)} is not a valid unrecord state file ({e}); delete it to '
        'process every shard again') from None


def changed_shards(urls: Sequence[str], state: Dict[str, Fingerprint],
                   storage_options: Optional[storage.StorageOptions] = None
                   ) -> List[Tuple[str, Fingerprint]]:
  """The shards whose fingerprint is new or differs from the state, with it."""
  changed = []
  for url in urls:
    current = fingerprint(url, storage_options)
    if state.get(url) != current:
      changed.append((url, current))
  return changed


def write_state(root: sink.OutputRoot,
                processed: Sequence[Tuple[str, Fingerprint]]) -> Dict[str, Fingerprint]:
  """Adds the processed shards' fingerprints to the state, atomically."""
  state = read_state(root)
  state.update({url: dict(fp) for url, fp in processed})
  root.write(STATE, (json.dumps({'version': 1, 'shards': state}, indent=1,
                                sort_keys=True) + '\n').encode('utf-8'))
  return state
