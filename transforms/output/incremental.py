"""Incremental materialization: which input shards are new or changed since the last run.

The state file `_unrecord_state.json` at the output root maps each processed shard's URL
to a fingerprint of its content, and records the output settings of the run that wrote
it. A shard's fingerprint is its size plus, where the store gives one, a checksum of its
content (GCS md5Hash/crc32c, S3 ETag), taken from the listing that found the shard, so
an object store answers a whole folder of shards in one request per 1,000; elsewhere (local disk, other fsspec stores) the
SHA-256 of its bytes. A local shard is hashed again only when its inode, mtime or ctime
moved: a change of content always moves ctime, which no tool can set back (`touch -r`,
`cp -p`, tar and rsync restore mtime only). The state is rewritten only at the end of a
successful run, so a run that fails part-way leaves it as it was and the next run redoes
exactly the shards that were not finished. Changed settings make every shard changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from transforms import errors
from transforms.inputs import input_files
from transforms.output import root_files

STATE = '_unrecord_state.json'
_HASH_BLOCK = 8 << 20

Fingerprint = Dict[str, object]


def fingerprint(url: str, storage_options: Optional[input_files.StorageOptions] = None,
                previous: Optional[Fingerprint] = None,
                listed: Optional[input_files.InputFile] = None) -> Fingerprint:
  """Size and content checksum of one input file: from `listed` (its listing's entry)
  when that carries a checksum, with no request at all; `previous` spares an unmoved
  local file its hashing."""
  if listed is not None and listed.checksums:
    return {'size': listed.size, **dict(listed.checksums)}
  fs, path = input_files.filesystem(url, storage_options)
  info = fs.info(path)
  found: Fingerprint = {'size': int(info.get('size') or 0)}
  found.update(input_files.content_checksums(info))
  if len(found) > 1:
    return found
  if input_files.is_local(fs):
    st = os.stat(path)
    found['stat'] = [st.st_ino, st.st_mtime_ns, st.st_ctime_ns]
    if previous and previous.get('sha256') and all(
        previous.get(k) == found[k] for k in ('size', 'stat')):
      found['sha256'] = previous['sha256']
      return found
  digest = hashlib.sha256()
  with fs.open(path, 'rb', block_size=_HASH_BLOCK) as f:
    for block in iter(lambda: f.read(_HASH_BLOCK), b''):
      digest.update(block)
  found['sha256'] = digest.hexdigest()
  return found


def _content(fp: Optional[Fingerprint]) -> Optional[Fingerprint]:
  return None if fp is None else {k: v for k, v in fp.items() if k != 'stat'}


def read_state(root: root_files.OutputRoot) -> dict:
  """{'shards': {url: Fingerprint}, 'settings': dict or None}; empty for a new root."""
  if not root.exists(STATE):
    return {'shards': {}, 'settings': None}
  try:
    state = json.loads(root.read(STATE))
    return {'shards': dict(state['shards']), 'settings': state.get('settings')}
  except (ValueError, KeyError, TypeError) as e:
    raise errors.ConfigError(
        f'{root.url_of(STATE)} is not a valid unrecord state file ({e}); delete it to '
        'process every shard again') from None


def changed_shards(files: Sequence[input_files.InputFile], state: dict, settings: dict,
                   storage_options: Optional[input_files.StorageOptions] = None
                   ) -> List[Tuple[str, Fingerprint]]:
  """The shards whose content is new or changed since the state, with their fingerprints;
  every shard when the state was written with other output settings. Object-store
  shards are judged from their listing alone; only files whose listing has no checksum
  (local disk, most other stores) are asked one by one."""
  shards = state['shards'] if state.get('settings') == settings else {}
  changed = []
  for item in files:
    current = fingerprint(item.url, storage_options, previous=shards.get(item.url),
                          listed=item)
    if _content(shards.get(item.url)) != _content(current):
      changed.append((item.url, current))
  return changed


def write_state(root: root_files.OutputRoot, processed: Sequence[Tuple[str, Fingerprint]],
                settings: dict) -> Dict[str, Fingerprint]:
  """Adds the processed shards' fingerprints to the state, atomically."""
  state = read_state(root)
  shards = state['shards'] if state['settings'] == settings else {}
  shards.update({url: dict(fp) for url, fp in processed})
  root.write(STATE, (json.dumps({'version': 2, 'settings': settings, 'shards': shards},
                                indent=1, sort_keys=True) + '\n').encode('utf-8'))
  return shards
