"""Shard outputs (`--pack tar|parquet`), Beam-free: samples packed into bounded shards.

A shard holds the images of one record range, and one worker writes a range's shards, so
the runner spreads the ranges. A large uncompressed input file is cut into ranges of at
least a shard's bytes (`range_bytes`); a file read as one range (most files, and every
compressed one) gets `{split/}{stem}-{shard:06d}.tar` or `.parquet`, and range `k` of a
file cut into several gets `{split/}{stem}-r{k:05d}-{shard:06d}.tar`, `stem` being the
input file's stem (`shard_names.stem_of`) and `shard` counting from 0 in record order
within the range (`shard_name`). Names therefore depend on the input and the settings
alone: a re-run writes the same shards with the same bytes, and a changed input file
rewrites only its own shards (`--incremental`).

A sample's key is its name template's path without the extension, less a leading
`{split}/` folder (which the shard's own folder takes); class folders stay in the key
(`cat/train-000012`), dots in its last segment become '_' (WebDataset and wids split a
member's key from its extension at the first dot).

WebDataset: each sample's members are `KEY.EXT` (the image), `KEY.json` (where the image
came from) and, with a label, `KEY.cls`, in that order. Parquet: a row per sample, its
`image` column in the Hugging Face `datasets` Image layout. A shard ends before the
sample that would take it past `--shard_size` bytes or `--shard_samples` samples (a
sample larger than the bound alone gets a shard of its own). Shards are written through
`OutputRoot.open_write`: a temp file renamed into place, or one upload, so a killed run
leaves no partial shard under a final name.
"""

from __future__ import annotations

import dataclasses
import io
import json
import posixpath
import re
import tarfile
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from transforms import errors
from transforms.images import name_templates
from transforms.inputs import shard_names
from transforms.output import naming
from transforms.output import root_files

PACKS = ('files', 'tar', 'parquet')
INDEX = naming.SHARD_INDEX
# Without --shard_size or --shard_samples a shard holds up to this many bytes.
DEFAULT_BYTES = 10 ** 9
_UNITS = {'': 1, 'b': 1, 'kb': 10 ** 3, 'mb': 10 ** 6, 'gb': 10 ** 9, 'tb': 10 ** 12,
          'kib': 1 << 10, 'mib': 1 << 20, 'gib': 1 << 30, 'tib': 1 << 40,
          'k': 10 ** 3, 'm': 10 ** 6, 'g': 10 ** 9, 't': 10 ** 12}
# A Parquet shard's row groups: at most this many samples, or about this many bytes.
GROUP_SAMPLES = 8192
GROUP_BYTES = 64 << 20
# What a Parquet shard holds beyond its images and text, counted against --shard_size
# before the file exists: per row, per row group (its pages' and columns' metadata) and
# the footer.
PARQUET_ROW_BYTES = 32
PARQUET_GROUP_BYTES = 4 << 10
PARQUET_FOOTER_BYTES = 4 << 10
_MTIME = 0  # every member's time: equal inputs give equal shards, byte for byte


def parse_size(text) -> Optional[int]:
  """'1GB', '500MB', '64MiB', '1000000' -> bytes (decimal units, binary with 'i')."""
  if text is None or text == '':
    return None
  if isinstance(text, int):
    value = text
  else:
    match = re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*', str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
      raise errors.ConfigError(
          f'--shard_size must be a size like 1GB, 500MB or 64MiB, got {text!r}')
    value = int(float(match.group(1)) * _UNITS[unit])
  if value < 1:
    raise errors.ConfigError('--shard_size must be at least 1 byte')
  return value


@dataclasses.dataclass(frozen=True)
class ShardSpec:
  """How images are packed: 'files' (one file per image, no shards), 'tar' or
  'parquet', and each shard's bounds (at least one; bytes by default)."""
  pack: str = 'files'
  max_bytes: Optional[int] = None
  max_samples: Optional[int] = None

  def __post_init__(self):
    if self.pack not in PACKS:
      raise errors.ConfigError(f'--pack must be one of {", ".join(PACKS)}, got '
                               f'{self.pack!r}')
    if self.max_samples is not None and self.max_samples < 1:
      raise errors.ConfigError('--shard_samples must be 1 or more')
    if self.max_bytes is not None and self.max_bytes < 1:
      raise errors.ConfigError('--shard_size must be at least 1 byte')
    if self.pack == 'files' and (self.max_bytes or self.max_samples):
      raise errors.ConfigError(
          '--shard_size and --shard_samples bound the shards of --pack tar or parquet; '
          'add --pack, or drop them')

  @property
  def packed(self) -> bool:
    return self.pack != 'files'

  @property
  def byte_bound(self) -> Optional[int]:
    if self.max_bytes is not None:
      return self.max_bytes
    return DEFAULT_BYTES if self.max_samples is None else None


def range_bytes(spec: ShardSpec, split_bytes: int) -> int:
  """The input bytes a record range of a packed export spans (at least): `split_bytes`,
  or the shard byte bound when larger, so a range fills about a shard rather than
  ending every shard early (each range's last shard is partly filled)."""
  return max(split_bytes, spec.byte_bound or 0)


# ---------------------------------------------------------------------------------------
# Names: the shard's, a sample's key, its members'


def folder_of(name: str, template: str) -> str:
  """The shard folder of an image named `name`: its first folder when the template
  starts with `{split}/`, else none."""
  if template.startswith(name_templates.SPLIT_PREFIX) and '/' in name:
    return name.split('/', 1)[0] + '/'
  return ''


def sample_key(name: str, folder: str) -> Tuple[str, str]:
  """(key, extension) of an image named `name` in a shard in `folder`."""
  rest = name[len(folder):]
  head, _, last = rest.rpartition('/')
  stem, dot, ext = last.rpartition('.')
  if not dot:
    stem, ext = last, ''
  key = (head + '/' if head else '') + stem.replace('.', '_')
  return key, ext


def shard_name(source: str, number: int, pack: str, folder: str = '', ordinal: int = 0,
               ranges: int = 1) -> str:
  """The shard `number` of record range `ordinal` of the `ranges` that the input file
  `source` was cut into, relative to the root.

  A file read whole keeps the plain `{stem}-{shard:06d}`. A cut file's names carry
  `r{k:05d}` and sort in record order. The `r` keeps them apart from TFDS-style inputs
  read whole: `train.tfrecord-00001-of-00004` has stem `train-00001`, so its first shard
  `train-00001-000000` would also be range 1's of `train.tfrecord` without it. The
  range count is not in the names: a file that grows at its end is cut where it was
  (the cuts follow the bytes from its start), so its earlier ranges' shards keep their
  names and bytes, and a re-run writes over its later ones rather than beside them.
  """
  stem = naming.safe_value(shard_names.stem_of(source))
  cut = f'-r{ordinal:05d}' if ranges > 1 else ''
  return naming.check_relative_path(f'{folder}{stem}{cut}-{number:06d}.{pack}')


def member_path(shard: str, member: str) -> str:
  """A manifest row's path for a sample packed in `shard`: `{shard}/{member}`."""
  return f'{shard}/{member}'


# ---------------------------------------------------------------------------------------
# A sample, and the two packers


@dataclasses.dataclass
class Sample:
  """One image to pack: its key, encoded bytes and what its `KEY.json` says."""
  key: str
  ext: str
  data: bytes
  meta: dict
  label: Optional[int]

  def members(self) -> List[Tuple[str, bytes]]:
    """The tar members in order: KEY.EXT, KEY.json, then KEY.cls with a label."""
    found = [(f'{self.key}.{self.ext}', self.data),
             (f'{self.key}.json', json_bytes(self.meta))]
    if self.label is not None:
      found.append((f'{self.key}.cls', str(self.label).encode('ascii')))
    return found


def json_bytes(meta: dict) -> bytes:
  return (json.dumps(meta, sort_keys=True, ensure_ascii=False) + '\n').encode('utf-8')


def sample_meta(*, id_value, label, label_name, source: str, index: int, offset,
                n: int, key: str) -> dict:
  """What `KEY.json` (and a Parquet row's provenance columns) say of one image."""
  return {'id': _text(id_value), 'label': label if isinstance(label, int) else
          _text(label), 'label_name': label_name, 'source': source, 'index': index,
          'offset': offset, 'n': n, 'image_key': key}


def _text(value):
  if value is None or isinstance(value, (int, float, str)):
    return value
  if isinstance(value, bytes):
    return value.decode('utf-8', 'replace')
  if isinstance(value, (list, tuple)):
    return ','.join(str(_text(v)) for v in value)
  return str(value)


def _round_up(size: int, block: int) -> int:
  return -(-size // block) * block


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
  info = tarfile.TarInfo(name)
  info.size, info.mtime, info.mode = size, _MTIME, 0o644
  info.uid = info.gid = 0
  info.uname = info.gname = ''
  return info


# A ustar header's fields after the name (mode, uid, gid), and from the checksum on
# (checksum as spaces, type regular file, no link, "ustar\000", empty owner names, no
# device, no prefix, padding to the block): the same for every member but its size.
_USTAR_IDS = b'0000644\0' + b'0000000\0' * 2
_USTAR_MTIME = b'%011o\0' % _MTIME
_USTAR_TAIL = b' ' * 8 + tarfile.REGTYPE + tarfile.NUL * 100 + tarfile.POSIX_MAGIC + \
    tarfile.NUL * (32 + 32 + 8 + 8 + 155 + 12)
_USTAR_FIXED_SUM = sum(_USTAR_IDS) + sum(_USTAR_MTIME) + sum(_USTAR_TAIL)


def _tar_header(name: str, size: int) -> bytes:
  """A member's header, byte for byte what `tarfile` writes in PAX format for
  `_tar_info(name, size)`. A name of up to 100 ASCII bytes and a size under 8 GiB (every
  member unrecord writes, nearly) fit a plain ustar header, built here in a few
  microseconds; any other member goes to tarfile, which puts a PAX extended header
  first (TarInfo.tobuf takes about 30 us a member)."""
  try:
    encoded = name.encode('ascii')
  except UnicodeEncodeError:
    encoded = None
  if encoded is None or len(encoded) > tarfile.LENGTH_NAME or size >= 8 ** 11:
    return _tar_info(name, size).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING,
                                       'surrogateescape')
  size_field = b'%011o\0' % size
  # The checksum: the header's bytes summed with its own field as spaces, in octal.
  checksum = b'%06o\0' % (_USTAR_FIXED_SUM + sum(encoded) + sum(size_field))
  return b''.join((encoded.ljust(tarfile.LENGTH_NAME, tarfile.NUL), _USTAR_IDS, size_field,
                   _USTAR_MTIME, checksum, _USTAR_TAIL[7:]))


class TarPacker:
  """A WebDataset tar being written to `out`; `add` returns each member's data offset.

  Writes what `tarfile.TarFile.addfile` and `close` would, byte for byte (the headers are
  tarfile's own), but builds each member's header once, for `cost` and `add` both, and
  writes the data straight to `out`: tarfile's way, three headers built twice and each
  member's bytes copied through a file object, took 321 us to pack a 28x28 image's three
  members, this 119 with tarfile's headers and 20 with `_tar_header`'s (one core, a busy
  machine; tests/output/test_tar_packer.py compares the bytes with tarfile's)."""

  suffix = 'tar'

  def __init__(self, out):
    self._out = out
    self.offset = 0
    self.samples = 0
    self._last = None  # (sample, its members' (name, header, data)) of the last `cost`

  def _members(self, sample: Sample) -> List[Tuple[str, bytes, bytes]]:
    if self._last is None or self._last[0] is not sample:
      self._last = (sample, [(name, _tar_header(name, len(data)), data)
                             for name, data in sample.members()])
    return self._last[1]

  def cost(self, sample: Sample) -> int:
    """The bytes `sample`'s members add: their headers and padded data."""
    return sum(len(header) + _round_up(len(data), tarfile.BLOCKSIZE)
               for _, header, data in self._members(sample))

  def size_with(self, added: int) -> int:
    """The finished file's size with `added` more bytes of members: the end-of-archive
    blocks, then padding to tar's record size."""
    return _round_up(self.offset + added + 2 * tarfile.BLOCKSIZE, tarfile.RECORDSIZE)

  def add(self, sample: Sample) -> Tuple[str, int]:
    """(the image member's name, its data's offset in the tar)."""
    placed = None
    for name, header, data in self._members(sample):
      if placed is None:
        placed = (name, self.offset + len(header))
      padding = -len(data) % tarfile.BLOCKSIZE
      self._out.write(header)
      self._out.write(data)
      if padding:
        self._out.write(tarfile.NUL * padding)
      self.offset += len(header) + len(data) + padding
    self._last = None
    self.samples += 1
    return placed

  def close(self) -> None:
    """The two zero blocks that end the archive, then zeros to a whole record."""
    end = self.size_with(0)
    self._out.write(tarfile.NUL * (end - self.offset))
    self.offset = end


def parquet_schema(label_names: Optional[Sequence[str]] = None) -> pa.Schema:
  """A Parquet shard's columns, with the `huggingface` metadata `datasets` reads its
  features from (an Image column, the rest Values)."""
  fields = [('key', pa.string(), 'string'), ('id', pa.string(), 'string'),
            ('label', pa.int64(), 'int64'), ('label_name', pa.string(), 'string'),
            ('source', pa.string(), 'string'), ('index', pa.int64(), 'int64'),
            ('offset', pa.int64(), 'int64'), ('n', pa.int64(), 'int64'),
            ('image_key', pa.string(), 'string')]
  features = {'image': {'_type': 'Image'}}
  features.update({name: {'dtype': dtype, '_type': 'Value'} for name, _, dtype in fields})
  image = pa.struct([('bytes', pa.binary()), ('path', pa.string())])
  schema = pa.schema([('image', image)] + [(name, kind) for name, kind, _ in fields])
  del label_names  # the label stays a Value: rows without a label are null, not -1
  return schema.with_metadata({'huggingface': json.dumps({'info': {'features': features}})})


class ParquetPacker:
  """A Parquet shard being written to `out`, a row group every GROUP_SAMPLES samples or
  GROUP_BYTES bytes; `add` returns the sample's row number."""

  suffix = 'parquet'

  def __init__(self, out):
    self._schema = parquet_schema()
    # Images are compressed already: their column is stored as it is; the text zstd'd.
    self._writer = pq.ParquetWriter(out, self._schema, compression={
        name: ('none' if name.startswith('image') else 'zstd')
        for name in ('image', *self._schema.names[1:])}, write_statistics=False)
    self._rows: List[Sample] = []
    self._held = 0
    self._size = PARQUET_FOOTER_BYTES
    self.samples = 0

  def cost(self, sample: Sample) -> int:
    return (len(sample.data) + len(json_bytes(sample.meta)) + PARQUET_ROW_BYTES +
            (0 if self._rows else PARQUET_GROUP_BYTES))

  def size_with(self, added: int) -> int:
    return self._size + added

  def add(self, sample: Sample) -> Tuple[str, int]:
    self._size += self.cost(sample)
    self._rows.append(sample)
    self._held += len(sample.data)
    self.samples += 1
    if len(self._rows) >= GROUP_SAMPLES or self._held >= GROUP_BYTES:
      self._flush()
    return sample.key, self.samples - 1

  def _flush(self) -> None:
    if not self._rows:
      return
    rows = self._rows
    columns = {'image': [{'bytes': s.data, 'path': f'{s.key}.{s.ext}'} for s in rows],
               'key': [s.key for s in rows]}
    for name in self._schema.names[2:]:
      columns[name] = [s.meta.get(name) if name != 'label' else s.label for s in rows]
    self._writer.write_table(pa.Table.from_pydict(columns, schema=self._schema))
    self._rows, self._held = [], 0

  def close(self) -> None:
    self._flush()
    self._writer.close()


PACKERS = {'tar': TarPacker, 'parquet': ParquetPacker}


# ---------------------------------------------------------------------------------------
# Writing one record range's shards


@dataclasses.dataclass
class Shard:
  """A finished shard: its name, input file, samples, size, and whether an existing one
  was left in place (--skip_existing)."""
  name: str
  source: str
  samples: int
  bytes: int
  kept: bool = False

  def entry(self) -> dict:
    """Its `shardindex.json` entry (wids reads `url` and `nsamples`)."""
    return {'url': self.name, 'nsamples': self.samples, 'bytes': self.bytes,
            'source': self.source}


class _Discard(Exception):
  """Raised into a shard's open write to drop it: its temp file (or spool) goes."""


def _drop(context) -> None:
  try:
    context.__exit__(_Discard, _Discard(), None)
  except _Discard:
    pass


class _Counted(io.RawIOBase):
  """The shard's open file as its packer sees it: counts the bytes written, and its
  `close` (which pyarrow's writer calls) leaves the file to `open_write`."""

  def __init__(self, out):
    super().__init__()
    self._out = out
    self.written = 0

  def writable(self) -> bool:
    return True

  def write(self, data) -> int:
    self._out.write(data)
    size = memoryview(data).nbytes
    self.written += size
    return size

  def tell(self) -> int:
    return self.written

  def flush(self) -> None:
    self._out.flush()

  def close(self) -> None:
    if not self.closed:
      self._out.flush()
    super().close()


class ShardWriter:
  """The shards of one record range (range `ordinal` of the `ranges` its input file was
  cut into), written one at a time; `add` and `finish` return each shard as it is
  finished, with the (sample, member, member offset or row) of each sample it holds, in
  order."""

  def __init__(self, root: root_files.OutputRoot, spec: ShardSpec, source: str,
               folder: str = '', skip_existing: bool = False, ordinal: int = 0,
               ranges: int = 1):
    self._root, self._spec, self._source = root, spec, source
    self._folder, self._skip_existing = folder, skip_existing
    self._ordinal, self._ranges = ordinal, ranges
    self._number = 0
    self._open = None  # (name, the open_write context, packer, placed, keys)

  def add(self, sample, item: Sample) -> Iterator[Tuple[Shard, list]]:
    """Packs `item` (`sample`: what the caller wants back with its placement); raises
    NamingError(name_collision) when its key is in the shard already."""
    if self._open is not None and not self._fits(item):
      yield self._close()
    if self._open is None:
      self._start()
    _, _, packer, placed, keys, _ = self._open
    if item.key in keys:
      raise errors.NamingError(
          errors.NAME_COLLISION,
          f'sample key {item.key!r} is in shard {self._open[0]!r} already; add {{id}}, '
          '{index} or {n} to --name_template to tell the images apart')
    keys.add(item.key)
    member, where = packer.add(item)
    placed.append((sample, member, where))

  def _fits(self, item: Sample) -> bool:
    packer = self._open[2]
    if self._spec.max_samples is not None and packer.samples >= self._spec.max_samples:
      return False
    bound = self._spec.byte_bound
    return bound is None or packer.size_with(packer.cost(item)) <= bound

  def _start(self) -> None:
    name = shard_name(self._source, self._number, self._spec.pack, self._folder,
                      self._ordinal, self._ranges)
    self._number += 1
    context = self._root.open_write(name)
    out = _Counted(context.__enter__())
    self._open = (name, context, PACKERS[self._spec.pack](out), [], set(), out)

  def finish(self) -> Iterator[Tuple[Shard, list]]:
    if self._open is not None:
      yield self._close()

  def abort(self) -> None:
    """Drops the shard being written (its temp file goes; nothing under its name)."""
    if self._open is not None:
      context = self._open[1]
      self._open = None
      _drop(context)

  def _close(self) -> Tuple[Shard, list]:
    name, context, packer, placed, _, out = self._open
    self._open = None
    try:
      packer.close()
      out.close()
    except BaseException as e:
      context.__exit__(type(e), e, e.__traceback__)
      raise
    size = out.written
    if self._skip_existing and self._existing_size(name) == size:
      _drop(context)
      return Shard(name, self._source, len(placed), size, kept=True), placed
    context.__exit__(None, None, None)
    return Shard(name, self._source, len(placed), size), placed

  def _existing_size(self, name: str) -> Optional[int]:
    try:
      return self._root.fs.size(self._root.path(name))
    except (FileNotFoundError, OSError):
      return None


# ---------------------------------------------------------------------------------------
# The shard index, and the shards of earlier runs that no longer belong


def read_index(root: root_files.OutputRoot) -> List[dict]:
  """The root's `shardindex.json` entries ([] when it has none)."""
  try:
    return list(json.loads(root.read(INDEX)).get('shardlist') or [])
  except (FileNotFoundError, ValueError, AttributeError):
    return []


def write_index(root: root_files.OutputRoot, written: Sequence[Shard],
                keep_previous: Callable[[str], bool], name: str = 'unrecord') -> dict:
  """Writes `shardindex.json`: this run's shards, and the previous index's shards that
  stay (`keep_previous(source)`, the manifest's own decision) and were not written
  again; removes the previous ones that go. Returns its summary for the report."""
  entries: Dict[str, dict] = {}
  removed = 0
  mine = {shard.name for shard in written}
  for entry in read_index(root):
    if entry.get('url') in mine:
      continue
    if keep_previous(entry.get('source')):
      entries[entry['url']] = entry
    else:
      try:
        root.fs.rm_file(root.path(entry['url']))
        removed += 1
      except FileNotFoundError:
        pass
  for shard in written:
    entries[shard.name] = shard.entry()
  shardlist = [entries[url] for url in sorted(entries)]
  index = {'__kind__': 'wids-shard-index-v1', 'wids_version': 1, 'name': name,
           'shardlist': shardlist}
  root.write(INDEX, (json.dumps(index, indent=1) + '\n').encode('utf-8'))
  return {'shards': len(shardlist), 'samples': sum(e['nsamples'] for e in shardlist),
          'written': sum(not s.kept for s in written),
          'kept': sum(s.kept for s in written), 'stale_removed': removed}


def read_image(root: root_files.OutputRoot, row: dict) -> bytes:
  """The image bytes a manifest row names: its file, or its member of a shard."""
  shard = row.get('shard')
  if not shard:
    return root.read(row['path'])
  if shard.endswith('.parquet'):
    with root.open_read(shard) as f:
      table = pq.ParquetFile(f).read(columns=['image'])
    return table.column('image')[int(row['shard_row'])].as_py()['bytes']
  start = int(row['member_offset'])
  return root.fs.cat_file(root.path(shard), start=start, end=start + int(row['bytes']))
