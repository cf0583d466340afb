"""What an input file's name says: its stem (shard number kept) and its split.

Output names use both (`{stem}`, `{split}`: transforms/output/naming.py); the schema and
the plan ask which splits the inputs hold. Pure: names only, no I/O.
"""

from __future__ import annotations

import posixpath
import re
from typing import Optional

_TFDS_SHARD = re.compile(
    r'^(?P<dataset>.+?)-(?P<split>[^-]+)\.(tfrecord|array_record|riegeli)'
    r'-\d{5}-of-\d{5}(\.gz|\.zz)?$')
_COMPRESSION_EXT = re.compile(r'\.(gz|gzip|zz|zlib)$', re.I)
_RECORD_EXT = re.compile(
    r'\.(tfrecords?|tfr|records?|array_record|riegeli)([-_.](?P<shard>\d+)(-of-\d+)?)?$',
    re.I)
_SPLIT_WORDS = re.compile(r'^(train|test|validation|valid|val|eval|dev)([-_.]|$)', re.I)


def split_of(url: str) -> Optional[str]:
  """The split a shard belongs to, from TFDS-style or train-/test- prefixed names."""
  name = posixpath.basename(url)
  match = _TFDS_SHARD.match(name)
  if match:
    return match.group('split')
  match = _SPLIT_WORDS.match(name)
  return match.group(1).lower() if match else None


def stem_of(url: str) -> str:
  """A file's name without its record and compression extensions, shard number kept.

  Distinct shards of one dataset get distinct stems, so the default name template
  cannot collide across them:

    'a/b/train.tfrecord.gz'                -> 'train'
    'mnist-train.tfrecord-00001-of-00004'  -> 'mnist-train-00001'
    'train.tfrecord-00001-of-00004'        -> 'train-00001'
    'part-00003.tfrecords'                 -> 'part-00003'
    'images.2024-01-01.rec'                -> 'images.2024-01-01'
  """
  name = _COMPRESSION_EXT.sub('', posixpath.basename(url.rstrip('/')))
  match = _RECORD_EXT.search(name)
  if match is None:
    return posixpath.splitext(name)[0] or name
  base = name[:match.start()] or name
  return f'{base}-{match.group("shard")}' if match.group('shard') else base
