"""What a shard output holds, Beam-free: its shards, their samples and members, read
back from the shards themselves (`shards.py` writes them). `unrecord inspect` shows it
(`describe`); `unrecord verify` checks the manifest against it (`tar_members`,
`parquet_images`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import tarfile
from typing import Iterator, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from transforms.output import root_files
from transforms.output import shards as shards_lib
from transforms.pixels import image_formats

SUFFIXES = ('.tar', '.parquet')
KINDS = {'tar': 'WebDataset tar shards', 'parquet': 'Parquet image shards'}


class ShardDamage(ValueError):
  """A shard's bytes are not a whole tar or Parquet file."""


def pack_of(name: str) -> Optional[str]:
  """'tar' or 'parquet' for a shard's name, else None."""
  for suffix in SUFFIXES:
    if name.endswith(suffix):
      return suffix[1:]
  return None


def member_key(name: str) -> Tuple[str, str]:
  """(key, extension) of a tar member as WebDataset reads it: the key ends at the first
  dot of the member's last path segment."""
  folder, _, last = name.rpartition('/')
  stem, _, ext = last.partition('.')
  return (folder + '/' if folder else '') + stem, ext


@dataclasses.dataclass(frozen=True)
class Member:
  """A tar member: its name, where its data starts and its size."""
  name: str
  offset: int
  size: int


def tar_members(f) -> List[Member]:
  """Every file member of the tar open in `f`, in order; ShardDamage when its headers
  are cut or garbled, or a member's data runs past the end of the file."""
  f.seek(0, 2)
  end = f.tell()
  f.seek(0)
  found = []
  try:
    with tarfile.open(fileobj=f, mode='r:') as tar:
      for info in tar:
        if info.isfile():
          found.append(Member(info.name, info.offset_data, info.size))
  except (tarfile.TarError, EOFError) as e:
    raise ShardDamage(f'not a whole tar ({type(e).__name__}: {e})') from None
  for member in found:
    if member.offset + member.size > end:
      raise ShardDamage(f'cut: member {member.name} ends at byte '
                        f'{member.offset + member.size}, the file at {end}')
  return found


def tar_samples(members: List[Member]) -> 'collections.OrderedDict[str, List[Member]]':
  """The tar's samples in order: key -> its members."""
  samples: 'collections.OrderedDict[str, List[Member]]' = collections.OrderedDict()
  for member in members:
    samples.setdefault(member_key(member.name)[0], []).append(member)
  return samples


def parquet_images(f) -> Iterator[Tuple[int, bytes]]:
  """(row, image bytes) of every row of the Parquet shard open in `f`, a row group at a
  time; ShardDamage when it cannot be read."""
  for row, data, _ in parquet_rows(f):
    yield row, data


def parquet_rows(f, columns: Sequence[str] = ()) -> Iterator[Tuple[int, bytes, dict]]:
  """(row, image bytes, {column: value} of `columns`) of every row of the Parquet shard
  open in `f`, a row group at a time (the most a shard's reader holds); ShardDamage when
  it cannot be read."""
  try:
    parquet = pq.ParquetFile(f)
    present = [name for name in columns if name in parquet.schema_arrow.names]
    row = 0
    for group in range(parquet.num_row_groups):
      table = parquet.read_row_group(group, columns=['image', *present])
      images = table.column('image').combine_chunks().field('bytes').to_pylist()
      values = {name: table.column(name).to_pylist() for name in present}
      del table
      for i, data in enumerate(images):
        yield row, data, {name: values[name][i] for name in present}
        row += 1
  except (pa.ArrowException, OSError, EOFError) as e:
    raise ShardDamage(f'not a whole Parquet file ({type(e).__name__}: '
                      f'{str(e)[:200]})') from None


@dataclasses.dataclass(frozen=True)
class PackedImage:
  """One sample's image as its shard holds it: its member (a tar's `KEY.EXT`, a Parquet
  shard's key), where it is (a tar's data offset, a Parquet shard's row), its bytes,
  and the sample's provenance (`KEY.json`, or the Parquet row's columns of the names
  `shards.sample_meta` gives)."""
  member: str
  where: int
  data: bytes
  meta: dict


# What `shards.sample_meta` writes, as `KEY.json` and as a Parquet shard's columns.
META_FIELDS = ('id', 'label', 'label_name', 'source', 'index', 'offset', 'n', 'image_key')


def packed_images(f, pack: str) -> Iterator[PackedImage]:
  """Each sample's image of the shard open in `f` ('tar' or 'parquet'), one at a time:
  a tar's member headers are read first, then each image and its `KEY.json` only as it
  comes; a Parquet shard a row group at a time. A tar sample with no image member (one
  that is only `KEY.json`, `KEY.cls`) is passed over; ShardDamage when the shard is not
  whole."""
  if pack == 'parquet':
    for row, data, meta in parquet_rows(f, ('key', *META_FIELDS)):
      key = meta.pop('key')
      if isinstance(key, str) and data is not None:
        yield PackedImage(key, row, data, meta)
    return
  for members in tar_samples(tar_members(f)).values():
    image = next((m for m in members if member_key(m.name)[1] not in ('json', 'cls')),
                 None)
    if image is None:
      continue
    meta = {}
    for member in members:
      if member_key(member.name)[1] == 'json':
        f.seek(member.offset)
        try:
          found = json.loads(f.read(member.size))
        except ValueError:
          found = None
        meta = found if isinstance(found, dict) else {}
    f.seek(image.offset)
    yield PackedImage(image.name, image.offset, f.read(image.size), meta)


# ---------------------------------------------------------------------------------------
# Where the shards are


def split_url(url: str) -> Tuple[str, Optional[str]]:
  """(root URL, one shard's name or None) of what a user points at: a shard output's
  root, its `shardindex.json`, or one shard file."""
  url = url.rstrip('/')
  head, _, last = url.rpartition('/')
  if last == shards_lib.INDEX:
    return head, None
  if pack_of(last):
    return head, last
  return url, None


def is_shard_output(url: str, storage_options=None) -> bool:
  """Whether `url` names shards (a .tar or .parquet file, a `shardindex.json`, or a
  folder holding one) rather than TFRecords."""
  last = url.rstrip('/').rpartition('/')[2]
  if last == shards_lib.INDEX or pack_of(last):
    return True
  if any(ch in url for ch in '*?[,'):
    return False
  try:
    return root_files.OutputRoot(url, storage_options).exists(shards_lib.INDEX)
  except Exception:  # pylint: disable=broad-except  # not ours to say: inspect's own read does
    return False


def listed_shards(root: root_files.OutputRoot) -> Tuple[List[dict], str]:
  """The root's shards as index entries ({url, nsamples, bytes}), and where they came
  from: 'shardindex.json', or 'counted' from the shards under the root when it has no
  index (nsamples then counted by reading each)."""
  entries = shards_lib.read_index(root)
  if entries:
    return entries, shards_lib.INDEX
  return [counted_entry(root, name) for name in shard_files(root)], 'counted'


def shard_names(root: root_files.OutputRoot) -> List[str]:
  """The names of the root's shards, relative to it: those `shardindex.json` lists when
  it reads, else the shard files under the root (`shard_files`)."""
  entries = shards_lib.read_index(root)
  names = sorted({e['url'] for e in entries
                  if isinstance(e, dict) and isinstance(e.get('url'), str)
                  and pack_of(e['url'])})
  return names or shard_files(root)


def shard_files(root: root_files.OutputRoot) -> List[str]:
  """The .tar and .parquet files under the root but unrecord's own (`_*`, temp names),
  in path order."""
  prefix = root.path('')
  return sorted(p[len(prefix):] for p in root.fs.find(root.root)
                if p.startswith(prefix) and pack_of(p)
                and not p[len(prefix):].startswith('_')
                and not root_files.is_temp_name(p))


def counted_entry(root: root_files.OutputRoot, name: str) -> dict:
  """A shard's index entry, from the shard itself."""
  with root.open_read(name) as f:
    if pack_of(name) == 'parquet':
      try:
        samples = pq.ParquetFile(f).metadata.num_rows
      except (pa.ArrowException, OSError) as e:
        raise ShardDamage(f'{name}: not a whole Parquet file ({e})') from None
    else:
      samples = len(tar_samples(tar_members(f)))
  return {'url': name, 'nsamples': samples, 'bytes': root.fs.size(root.path(name))}


# ---------------------------------------------------------------------------------------
# `unrecord inspect` on shards


def describe(url: str, storage_options=None) -> dict:
  """What a shard output (or one shard) holds: shard, sample and byte counts, the
  members (tar) or columns (Parquet) of a sample, and its first sample."""
  root_url, single = split_url(url)
  root = root_files.OutputRoot(root_url, storage_options)
  if single is not None:
    entries, source = [counted_entry(root, single)], 'counted'
  else:
    entries, source = listed_shards(root)
  if not entries:
    raise FileNotFoundError(f'{url} holds no .tar or .parquet shard and no '
                            f'{shards_lib.INDEX}')
  packs = sorted({pack_of(e['url']) for e in entries})
  first = entries[0]['url']
  found = {'root': root.url, 'pack': packs[0] if len(packs) == 1 else ','.join(packs),
           'shards': len(entries), 'samples': sum(int(e['nsamples']) for e in entries),
           'bytes': sum(int(e.get('bytes') or root.fs.size(root.path(e['url'])))
                        for e in entries),
           'counts_from': source, 'first_shard': first}
  with root.open_read(first) as f:
    if pack_of(first) == 'parquet':
      found.update(_parquet_sample(f))
    else:
      found.update(_tar_sample(f))
  return found


def _image_info(name: str, data: bytes) -> dict:
  info = {'member': name, 'bytes': len(data), 'format': image_formats.sniff_format(data)}
  try:
    info['width'], info['height'] = image_formats.image_size(data)
  except Exception as e:  # pylint: disable=broad-except  # shown, not raised: inspect reads
    info['error'] = f'{type(e).__name__}: {e}'
  return info


def _tar_sample(f) -> dict:
  samples = tar_samples(tar_members(f))
  layouts = collections.Counter(tuple(member_key(m.name)[1] for m in members)
                                for members in samples.values())
  key, members = next(iter(samples.items()))
  sample = {'key': key, 'members': {}}
  for member in members:
    f.seek(member.offset)
    data = f.read(member.size)
    ext = member_key(member.name)[1]
    if ext == 'json':
      sample['json'] = json.loads(data)
    elif ext == 'cls':
      sample['cls'] = data.decode('utf-8', 'replace').strip()
    elif image_formats.sniff_format(data):
      sample['image'] = _image_info(member.name, data)
    sample['members'][member.name] = member.size
  return {'members_per_sample': [{'members': list(layout), 'samples': n}
                                 for layout, n in layouts.most_common()],
          'sample': sample}


def _parquet_sample(f) -> dict:
  try:
    parquet = pq.ParquetFile(f)
    schema = parquet.schema_arrow
    row = parquet.read_row_group(0).slice(0, 1).to_pylist()[0]
  except (pa.ArrowException, OSError, IndexError) as e:
    raise ShardDamage(f'not a whole Parquet file ({type(e).__name__}: {e})') from None
  features = {}
  try:
    features = json.loads((schema.metadata or {}).get(b'huggingface', b'{}')).get(
        'info', {}).get('features', {})
  except ValueError:
    pass
  columns = [{'name': field.name, 'type': str(field.type),
              **({'feature': features[field.name].get('_type')}
                 if field.name in features else {})} for field in schema]
  image = row.pop('image', None) or {}
  sample = {'key': row.get('key'), 'row': 0, 'metadata': row}
  if image.get('bytes') is not None:
    sample['image'] = _image_info(image.get('path'), image['bytes'])
  return {'columns': columns, 'rows_in_first_shard': parquet.metadata.num_rows,
          'sample': sample}


def render_text(found: dict) -> str:
  """`describe`'s answer as `unrecord inspect` prints it."""
  lines = [f'{KINDS.get(found["pack"], found["pack"])} at {found["root"]}: '
           f'{found["shards"]:,} shards, {found["samples"]:,} samples, '
           f'{found["bytes"]:,} bytes (counts from {found["counts_from"]})']
  if 'members_per_sample' in found:
    for layout in found['members_per_sample']:
      lines.append(f'members per sample: {", ".join(layout["members"])} '
                   f'({layout["samples"]:,} samples of {found["first_shard"]})')
  if 'columns' in found:
    lines.append('columns: ' + ', '.join(
        f'{c["name"]} ({c["type"]}' + (f'; datasets {c["feature"]}' if c.get('feature')
                                        == 'Image' else '') + ')'
        for c in found['columns']))
  sample = found['sample']
  lines.append(f'first sample: {sample["key"]} in {found["first_shard"]}'
               + (f' (row {sample["row"]})' if 'row' in sample else ''))
  image = sample.get('image')
  if image:
    size = (f'{image["width"]}x{image["height"]}' if 'width' in image
            else f'unreadable ({image.get("error")})')
    lines.append(f'  image:  {image["member"]}: {image["format"]} {size}, '
                 f'{image["bytes"]:,} bytes')
  if 'json' in sample:
    lines.append(f'  json:   {json.dumps(sample["json"], sort_keys=True)}')
  if 'cls' in sample:
    lines.append(f'  cls:    {sample["cls"]}')
  if 'metadata' in sample:
    lines.append(f'  row:    {json.dumps(sample["metadata"], sort_keys=True)}')
  return '\n'.join(lines)
