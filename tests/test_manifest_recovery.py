"""A damaged previous manifest is rebuilt, not a lock on the root (issue 43, item 1).

Whole-job tests on TensorFlow-written records of photos: a JSONL or Parquet manifest
has a part cut in half, garbled in place, deleted while `_parts.json` lists it, or
present but not listed, or `_parts.json` itself cut, garbled or deleted. The next run,
plain or --skip_existing, exits 0 with `_SUCCESS`, one warning line naming what was
damaged, no traceback, and a manifest whose rows are the image files on disk with their
sizes and sha256; the run after that is quiet and leaves the rows as they are."""

import hashlib
import json
import os
import shutil

import pytest

from tests import fixtures
from tests import outputs
from tests.test_export_job import OFFLINE, _files

PHOTOS = 24
PART_ROWS = '8'  # three parts: cam-0 0..7, cam-0 8..cam-1 3, cam-1 4..11
DAMAGED_PART = 1
# What a re-run with --skip_existing makes again from the record: every field but how
# the file was made (its row says `existing`).
FROM_RECORD = ('path', 'bytes', 'sha256', 'source', 'index', 'offset', 'n', 'key', 'label',
               'label_name', 'format', 'dtype_in', 'shape_in', 'shape_out')


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
  """Two shards of labelled photos, uint8 tensors, written by TensorFlow."""
  root = tmp_path_factory.mktemp('recovery_in')
  for shard in range(2):
    payloads = []
    for i in range(PHOTOS // 2):
      payloads.append(fixtures.example({
          'image': fixtures.bytes_feature(fixtures.serialized_tensor(
              fixtures.photo(shard * 12 + i, 24, 20))),
          'label': fixtures.int64_feature(i % 3)}))
    fixtures.write_tfrecord(str(root / f'cam-{shard}.tfrecord'), payloads)
  return str(root)


def _run(unrecord, inputs, out, manifest_format, *args, pattern='*.tfrecord'):
  result = unrecord('export', '--input', os.path.join(inputs, pattern), '--output',
                    str(out), '--manifest_format', manifest_format, '--manifest_part_rows',
                    PART_ROWS, '--label_key', 'label', *args, env=OFFLINE)
  assert result.returncode == 0, result.stderr[-4000:]
  assert 'Traceback' not in result.stdout + result.stderr, result.stderr[-4000:]
  assert (out / '_SUCCESS').exists()
  return result


@pytest.fixture(scope='module')
def exported(unrecord_module, shards, tmp_path_factory):
  """{format: a finished export of both shards, as the first run left it}."""
  roots = {}
  for manifest_format in ('jsonl', 'parquet'):
    out = tmp_path_factory.mktemp(f'exported_{manifest_format}') / 'out'
    _run(unrecord_module, shards, out, manifest_format)
    assert len(outputs.manifest_parts(out)) == 3
    roots[manifest_format] = out
  return roots


@pytest.fixture(scope='module')
def unrecord_module():
  from tests.conftest import run_unrecord  # pylint: disable=import-outside-toplevel
  return run_unrecord


def _part(out, manifest_format, index=DAMAGED_PART):
  return out / '_manifest' / f'part-{index:05d}-of-00003.{manifest_format}'


def _cut(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def _garble(path):
  """Overwrites 48 bytes a third of the way in, the file's size unchanged."""
  data = bytearray(path.read_bytes())
  at = len(data) // 3
  data[at:at + 48] = b'\xfe#garbled!' * 4 + b'\xfe' * 8
  path.write_bytes(bytes(data))


def _unlist(out, name):
  """`_parts.json` as if it had never listed `name` (its part file stays)."""
  index_path = out / '_manifest' / '_parts.json'
  index = json.loads(index_path.read_text())
  dropped = [p for p in index['parts'] if p['name'] == name]
  index['parts'] = [p for p in index['parts'] if p['name'] != name]
  index['rows'] -= dropped[0]['rows']
  index_path.write_text(json.dumps(index, indent=1) + '\n')


DAMAGES = {  # name: (damage the root, what the warning names)
    'part_cut': (lambda out, f: _cut(_part(out, f)), lambda f: _part_name(f)),
    'part_garbled': (lambda out, f: _garble(_part(out, f)), lambda f: _part_name(f)),
    'part_deleted': (lambda out, f: os.remove(_part(out, f)), lambda f: _part_name(f)),
    'part_unlisted': (lambda out, f: _unlist(out, _part(out, f).name),
                      lambda f: _part_name(f)),
    'index_cut': (lambda out, f: _cut(out / '_manifest' / '_parts.json'),
                  lambda f: '_manifest/_parts.json'),
    'index_garbled': (lambda out, f: _garble(out / '_manifest' / '_parts.json'),
                      lambda f: '_manifest/_parts.json'),
    'index_deleted': (lambda out, f: os.remove(out / '_manifest' / '_parts.json'),
                      lambda f: '_manifest/_parts.json'),
}


def _part_name(manifest_format):
  return f'_manifest/part-{DAMAGED_PART:05d}-of-00003.{manifest_format}'


def _damaged_copy(exported, manifest_format, damage, tmp_path, name):
  """A copy of the finished root `exported[manifest_format]` (or `exported` itself, a
  root) with `damage` done to its manifest."""
  out = tmp_path / name
  shutil.copytree(exported[manifest_format] if isinstance(exported, dict) else exported,
                  out)
  os.remove(out / '_SUCCESS')
  DAMAGES[damage][0](out, manifest_format)
  return out


def _warnings(result):
  return [line for line in (result.stdout + result.stderr).splitlines()
          if 'warning' in line.lower()]


def _check_rows_are_the_files(out):
  """The manifest's rows are the image files on disk, each with its size and sha256."""
  rows = outputs.manifest_rows(out)
  images = sorted(f for f in _files(out) if not f.startswith('_'))
  assert [r['path'] for r in rows] == images
  for row in rows:
    data = (out / row['path']).read_bytes()
    assert (row['bytes'], row['sha256']) == (len(data), hashlib.sha256(data).hexdigest())
  return rows


@pytest.mark.parametrize('manifest_format', ['jsonl', 'parquet'])
@pytest.mark.parametrize('damage', sorted(DAMAGES))
def test_a_damaged_manifest_is_rebuilt_by_the_next_run(unrecord, shards, exported,
                                                        manifest_format, damage, tmp_path):
  before = outputs.manifest_rows(exported[manifest_format])
  named = DAMAGES[damage][1](manifest_format)

  # A plain re-run writes every image again, and its rows are a first run's.
  out = _damaged_copy(exported, manifest_format, damage, tmp_path, 'plain')
  result = _run(unrecord, shards, out, manifest_format)
  [warning] = _warnings(result)
  assert named in warning and 'rebuilt' in warning, warning
  assert _check_rows_are_the_files(out) == before
  report = json.loads((out / '_report.json').read_text())
  assert [r['part'] for r in report['manifest']['repaired']] == [named]

  # --skip_existing writes nothing; the lost rows come back from the records and the
  # files on disk: the same image, bytes and digest as before, the record's provenance.
  out = _damaged_copy(exported, manifest_format, damage, tmp_path, 'skip')
  result = _run(unrecord, shards, out, manifest_format, '--skip_existing')
  [warning] = _warnings(result)
  assert named in warning and 'rebuilt' in warning, warning
  rows = _check_rows_are_the_files(out)
  assert [{k: r[k] for k in FROM_RECORD} for r in rows] == [
      {k: r[k] for k in FROM_RECORD} for r in before]
  assert json.loads((out / '_report.json').read_text())['skipped'] == PHOTOS

  # Repaired, the manifest reads clean: the next run says nothing and keeps the rows.
  # (Asked of one damage to a part and one to the index, in each format: the repair
  # writes the same committed manifest whatever was damaged, and each run costs seconds.)
  if damage not in ('part_cut', 'index_garbled'):
    return
  result = _run(unrecord, shards, out, manifest_format, '--skip_existing')
  assert _warnings(result) == []
  assert outputs.manifest_rows(out) == rows
  assert 'repaired' not in json.loads((out / '_report.json').read_text())['manifest']


@pytest.mark.parametrize('manifest_format', ['jsonl', 'parquet'])
@pytest.mark.parametrize('damage', ['part_cut', 'part_deleted'])
def test_rows_no_run_makes_again_are_rebuilt_from_the_files(unrecord, shards, exported,
                                                              manifest_format, damage,
                                                              tmp_path):
  """The damaged part held rows of images this run does not make (another shard's, the
  run adding one shard with --skip_existing): they are made again from the files alone,
  and a later run that reads their records gives them back their provenance."""
  before = {r['path']: r for r in outputs.manifest_rows(exported[manifest_format])}
  out = _damaged_copy(exported, manifest_format, damage, tmp_path, 'out')
  result = _run(unrecord, shards, out, manifest_format, '--skip_existing',
                pattern='cam-0.tfrecord')
  [warning] = _warnings(result)
  assert _part_name(manifest_format) in warning, warning
  rows = {r['path']: r for r in _check_rows_are_the_files(out)}
  assert sorted(rows) == sorted(before)
  lost = ['cam-1-000000.png', 'cam-1-000001.png', 'cam-1-000002.png', 'cam-1-000003.png']
  rebuilt = [path for path in lost if rows[path] != before[path]]
  assert rebuilt  # a cut JSONL part keeps the whole lines before the cut
  for path in rebuilt:  # from the file: what it is; of the record, nothing invented
    row = rows[path]
    assert {k: row[k] for k in ('format', 'shape_out', 'dtype_out')} == {
        'format': 'png', 'shape_out': [24, 20, 3], 'dtype_out': 'uint8'}, row
    assert all(row[k] is None for k in ('source', 'index', 'offset', 'key', 'label')), row
  for path, row in rows.items():  # cam-0's are made again from their records
    if path not in lost:
      assert {k: row[k] for k in FROM_RECORD} == {k: before[path][k] for k in FROM_RECORD}

  result = _run(unrecord, shards, out, manifest_format, '--skip_existing')
  assert _warnings(result) == []
  rows = {r['path']: r for r in _check_rows_are_the_files(out)}
  for path in lost:
    assert {k: rows[path][k] for k in FROM_RECORD} == {k: before[path][k] for k in FROM_RECORD}


@pytest.mark.parametrize('manifest_format', ['jsonl', 'parquet'])
def test_rebuilt_rows_carry_the_runs_checksum_and_the_root_verifies(
    unrecord, shards, manifest_format, tmp_path):
  """With --checksum crc32c, the rows rebuilt from the files hold crc32c (not sha256),
  as every other row of the run does, and `unrecord verify` passes the repaired root."""
  import google_crc32c  # pylint: disable=import-outside-toplevel
  out = tmp_path / 'out'
  _run(unrecord, shards, out, manifest_format, '--checksum', 'crc32c')
  _cut(_part(out, manifest_format))
  result = _run(unrecord, shards, out, manifest_format, '--checksum', 'crc32c',
                '--skip_existing', pattern='cam-0.tfrecord')
  [warning] = _warnings(result)
  assert _part_name(manifest_format) in warning, warning
  rows = outputs.manifest_rows(out)
  assert [r['path'] for r in rows] == sorted(f for f in _files(out) if not f.startswith('_'))
  assert any(r['source'] is None for r in rows)  # some were rebuilt from their files
  for row in rows:
    data = (out / row['path']).read_bytes()
    assert row['crc32c'] == f'{google_crc32c.value(data):08x}', row
    assert row.get('sha256') is None, row
  verified = unrecord('verify', str(out))
  assert verified.returncode == 0, verified.stdout + verified.stderr


# ---------------------------------------------------------------------------------------
# A packed root (--pack tar|parquet): the lost rows come from the shards' samples

PACK_ARGS = ('--shard_samples', '5')  # 3 shards of cam-0, 3 of cam-1
# What a row made from a shard's sample says, each as a first run's row for that sample
# says it: where the image is, what it is, and the provenance its sample carries.
FROM_SHARD = ('path', 'shard', 'member', 'member_offset', 'shard_row', 'bytes', 'sha256',
              'format', 'shape_out', 'dtype_out', 'id', 'label', 'label_name', 'source',
              'index', 'offset', 'n', 'key')
# What only the encoding knew: null in a row made from a shard.
HOW_MADE = ('encoder', 'normalization', 'value_range', 'passthrough', 'shape_in',
            'dtype_in')


@pytest.fixture(scope='module')
def packed(unrecord_module, shards, tmp_path_factory):
  """{(pack, manifest format): a finished --pack export of both input files}."""
  roots = {}
  for pack in ('tar', 'parquet'):
    for manifest_format in ('jsonl', 'parquet'):
      out = tmp_path_factory.mktemp(f'packed_{pack}_{manifest_format}') / 'out'
      _run(unrecord_module, shards, out, manifest_format, '--pack', pack, *PACK_ARGS)
      assert len(outputs.manifest_parts(out)) == 3
      roots[pack, manifest_format] = out
  return roots


def _shard_samples(out, pack):
  """{SHARD/MEMBER: (bytes, sha256)} of every sample in the root's shards, read by the
  `webdataset` library (tar) or pyarrow (Parquet), not by unrecord."""
  found = {}
  if pack == 'tar':
    import webdataset as wds  # pylint: disable=import-outside-toplevel
    urls = sorted(str(p) for p in out.glob('*.tar'))
    for sample in wds.WebDataset(urls, shardshuffle=False):
      shard = os.path.basename(sample['__url__'])
      found[f'{shard}/{sample["__key__"]}.png'] = sample['png']
  else:
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    for path in sorted(out.glob('*.parquet')):
      for row in pq.read_table(path, columns=['key', 'image']).to_pylist():
        found[f'{path.name}/{row["key"]}'] = row['image']['bytes']
  return {path: (len(data), hashlib.sha256(data).hexdigest())
          for path, data in found.items()}


def _check_rows_are_the_samples(out, pack):
  """The manifest's rows are the shards' samples, each with its size and sha256; each
  tar row's member_offset is where tarfile says its member's data starts."""
  rows = outputs.manifest_rows(out)
  samples = _shard_samples(out, pack)
  assert len(samples) == PHOTOS
  assert [r['path'] for r in rows] == sorted(samples)
  assert {r['path']: (r['bytes'], r['sha256']) for r in rows} == samples
  if pack == 'tar':
    import tarfile  # pylint: disable=import-outside-toplevel
    for row in rows:
      with tarfile.open(out / row['shard']) as tar:
        assert tar.getmember(row['member']).offset_data == row['member_offset'], row
  return rows


@pytest.mark.parametrize('manifest_format', ['jsonl', 'parquet'])
@pytest.mark.parametrize('pack', ['tar', 'parquet'])
@pytest.mark.parametrize('damage', ['part_cut', 'part_deleted', 'index_deleted'])
def test_rows_of_a_packed_root_are_rebuilt_from_its_shards(unrecord, shards, packed, pack,
                                                           manifest_format, damage,
                                                           tmp_path):
  """The damaged part held rows of cam-1's samples, and the run (--skip_existing of
  cam-0 alone) does not make them again: they come back from cam-1's shards, with what
  the sample says of its record; a later run that reads cam-1 fills in the rest."""
  root = packed[pack, manifest_format]
  before = {r['path']: r for r in outputs.manifest_rows(root)}
  out = _damaged_copy(root, manifest_format, damage, tmp_path, 'out')
  result = _run(unrecord, shards, out, manifest_format, '--skip_existing', '--pack', pack,
                *PACK_ARGS, pattern='cam-0.tfrecord')
  [warning] = _warnings(result)
  assert DAMAGES[damage][1](manifest_format) in warning, warning
  assert 'shards' in warning, warning
  rows = {r['path']: r for r in _check_rows_are_the_samples(out, pack)}
  assert sorted(rows) == sorted(before)
  lost = [path for path in sorted(before)[8:16] if path.startswith('cam-1')]
  assert len(lost) == 4
  for path, row in rows.items():
    assert {k: row[k] for k in FROM_SHARD} == {k: before[path][k] for k in FROM_SHARD}
  rebuilt = [path for path in lost if rows[path] != before[path]]
  if damage == 'index_deleted':  # every part reads whole: its rows match and are kept
    assert rebuilt == []
  elif damage == 'part_deleted' or manifest_format == 'parquet':
    assert rebuilt == lost  # nothing of the part to keep
  else:
    assert rebuilt  # a cut JSONL part keeps the whole lines before the cut
  for path in rebuilt:
    assert all(rows[path][k] is None for k in HOW_MADE), {k: rows[path][k] for k in HOW_MADE}
  verified = unrecord('verify', str(out))
  assert verified.returncode == 0, verified.stdout + verified.stderr

  if damage != 'part_cut':
    return
  # A run that encodes cam-1 again prefers its own rows to those made from the shards.
  result = _run(unrecord, shards, out, manifest_format, '--skip_existing', '--pack', pack,
                *PACK_ARGS)
  assert _warnings(result) == []
  assert {r['path']: r for r in _check_rows_are_the_samples(out, pack)} == before
