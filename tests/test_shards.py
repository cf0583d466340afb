"""--pack tar and --pack parquet, run as a user runs them, read back with the readers
users train with: `webdataset`, `wids` and Hugging Face `datasets`."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from tests import emulators
from tests import fixtures
from tests import outputs
from tests.conftest import REPO
from transforms.output import root_files

OFFLINE = {'http_proxy': 'http://127.0.0.1:9', 'https_proxy': 'http://127.0.0.1:9',
           'HTTP_PROXY': 'http://127.0.0.1:9', 'HTTPS_PROXY': 'http://127.0.0.1:9'}
NAMES = ('astronaut', 'coffee', 'chelsea')
STEMS = ('train-00000-of-00002', 'train-00001-of-00002')


def _export(unrecord, *args, expect=0, env=None):
  result = unrecord('export', *args, env={**OFFLINE, **(env or {})})
  assert result.returncode == expect, result.stderr[-4000:]
  return result


def _rgb(data: bytes) -> np.ndarray:
  return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                      cv2.COLOR_BGR2RGB)


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
  """Two TensorFlow-written files of 6 PNG photographs each, with id and label; the
  label names; the file output of the same input (the reference); the PNG bytes."""
  root = tmp_path_factory.mktemp('shard_inputs')
  encoded = {}
  for shard, stem in enumerate(STEMS):
    payloads = []
    for i in range(6):
      png = fixtures.encode_png(fixtures.photo(shard * 6 + i, 48, 40))
      encoded[(stem, i)] = png
      payloads.append(fixtures.example({
          'image': fixtures.bytes_feature(png),
          'id': fixtures.bytes_feature(f's{shard}r{i}'.encode()),
          'label': fixtures.int64_feature(i % 3)}))
    fixtures.write_tfrecord(str(root / 'in' / f'{stem}.tfrecord'), payloads)
  names = root / 'names.txt'
  names.write_text('\n'.join(NAMES) + '\n')
  files = root / 'files'
  from tests.conftest import run_unrecord
  result = run_unrecord('export', '--input', str(root / 'in'), '--output', str(files),
                        '--label_names', str(names), env=OFFLINE)
  assert result.returncode == 0, result.stderr[-3000:]
  return str(root / 'in'), str(names), str(files), encoded


def test_tar_shards_read_back_with_webdataset_and_wids(unrecord, photos, tmp_path):
  source, names, files, encoded = photos
  out = str(tmp_path / 'tar')
  result = _export(unrecord, '--input', source, '--output', out, '--label_names', names,
                   '--pack', 'tar', '--shard_samples', '4')
  assert 'written 12 (passthrough 12)' in result.stderr
  shards = sorted(n for n in os.listdir(out) if n.endswith('.tar'))
  assert shards == [f'{stem}-{k:06d}.tar' for stem in STEMS for k in range(2)]
  assert not [n for n in os.listdir(out) if n.endswith('.png')]
  assert os.path.exists(os.path.join(out, '_SUCCESS'))

  # Member order and names: KEY.png, KEY.json, KEY.cls per sample, in record order.
  with tarfile.open(os.path.join(out, shards[0])) as tar:
    members = [m.name for m in tar.getmembers()]
  assert members == [f'{STEMS[0]}-{i:06d}.{ext}' for i in range(4)
                     for ext in ('png', 'json', 'cls')]

  import webdataset as wds
  urls = [os.path.join(out, s) for s in shards]
  samples = list(wds.WebDataset(urls, shardshuffle=False))
  assert [s['__key__'] for s in samples] == [f'{stem}-{i:06d}' for stem in STEMS
                                             for i in range(6)]
  for sample in samples:
    stem, index = sample['__key__'].rsplit('-', 1)
    index = int(index)
    # Passthrough: the record's own PNG bytes, and the pixels of the file output.
    assert sample['png'] == encoded[(stem, index)]
    with open(os.path.join(files, f'{sample["__key__"]}.png'), 'rb') as f:
      assert np.array_equal(_rgb(sample['png']), _rgb(f.read()))
    meta = json.loads(sample['json'])
    assert meta == {
        'id': f's{STEMS.index(stem)}r{index}', 'label': index % 3,
        'label_name': NAMES[index % 3], 'source': os.path.join(source, f'{stem}.tfrecord'),
        'index': index, 'offset': meta['offset'], 'n': 0, 'image_key': 'image'}
    assert int(sample['cls']) == index % 3
  decoded = next(iter(wds.WebDataset(urls[:1], shardshuffle=False).decode('rgb8')))
  assert np.array_equal(decoded['png'], _rgb(encoded[(STEMS[0], 0)]))

  # The offsets in KEY.json are the records' byte offsets in their file.
  offsets = [json.loads(s['json'])['offset'] for s in samples[:6]]
  frames = [12 + len(p) + 4 for p in fixtures.read_with_tf(
      os.path.join(source, f'{STEMS[0]}.tfrecord'))]
  assert offsets == [sum(frames[:i]) for i in range(6)]

  # The manifest names each image's shard and member, its offset, size and sha256.
  rows = outputs.manifest_rows(out)
  assert len(rows) == 12
  for row in rows:
    with open(os.path.join(out, row['shard']), 'rb') as f:
      f.seek(row['member_offset'])
      data = f.read(row['bytes'])
    assert row['sha256'] == hashlib.sha256(data).hexdigest()
    assert row['path'] == f'{row["shard"]}/{row["member"]}'
    assert data == encoded[(row['member'][:-11], row['index'])]

  # shardindex.json in wids' format (its `resolve_dsdesc` asks for wids_version 1 and
  # each shard's url and nsamples; wids itself needs torch, which the tests do not have):
  # the urls, relative to the index, and the counts let a reader find sample i.
  index = json.load(open(os.path.join(out, 'shardindex.json')))
  assert index['wids_version'] == 1
  assert [(e['url'], e['nsamples']) for e in index['shardlist']] == [
      (s, 4 if s.endswith('0.tar') else 2) for s in shards]
  starts = np.cumsum([0] + [e['nsamples'] for e in index['shardlist']])
  shard_of_5 = index['shardlist'][int(np.searchsorted(starts, 5, side='right')) - 1]
  fifth = list(wds.WebDataset(os.path.join(out, shard_of_5['url']), shardshuffle=False))
  assert fifth[5 - 4]['__key__'] == samples[5]['__key__'] == f'{STEMS[0]}-000005'
  report = json.load(open(os.path.join(out, '_report.json')))
  assert report['shards']['shards'] == 4 and report['written'] == 12
  # The report's sample grid is read from the shards.
  assert open(os.path.join(out, '_report.html')).read().count('<figure') == 12


def test_shard_size_bounds_every_shard(unrecord, photos, tmp_path):
  source, _, _, _ = photos
  out = str(tmp_path / 'sized')
  _export(unrecord, '--input', source, '--output', out, '--pack', 'tar',
          '--shard_size', '20KB')
  shards = sorted(n for n in os.listdir(out) if n.endswith('.tar'))
  assert len(shards) > 2
  counted = 0
  for name in shards:
    assert os.path.getsize(os.path.join(out, name)) <= 20_000, name
    with tarfile.open(os.path.join(out, name)) as tar:
      counted += len(tar.getmembers()) // 2  # no label key: KEY.png and KEY.json
  assert counted == 12
  for stem in STEMS:  # numbered from 0 within each input file, without gaps
    mine = [n for n in shards if n.startswith(stem)]
    assert mine == [f'{stem}-{k:06d}.tar' for k in range(len(mine))]


def test_parquet_shards_load_in_hugging_face_datasets(unrecord, photos, tmp_path):
  source, names, files, encoded = photos
  out = str(tmp_path / 'parquet')
  _export(unrecord, '--input', source, '--output', out, '--label_names', names,
          '--pack', 'parquet', '--shard_samples', '4')
  shards = sorted(n for n in os.listdir(out) if n.endswith('.parquet'))
  assert shards == [f'{stem}-{k:06d}.parquet' for stem in STEMS for k in range(2)]
  metadata = pq.read_schema(os.path.join(out, shards[0])).metadata
  assert json.loads(metadata[b'huggingface'])['info']['features']['image'] == {
      '_type': 'Image'}

  import datasets
  loaded = datasets.load_dataset(
      'parquet', data_files=[os.path.join(out, s) for s in shards], split='train',
      cache_dir=str(tmp_path / 'hf'))
  assert isinstance(loaded.features['image'], datasets.Image)
  assert len(loaded) == 12
  for row in loaded:
    stem, index = row['key'].rsplit('-', 1)
    index = int(index)
    with open(os.path.join(files, f'{row["key"]}.png'), 'rb') as f:
      assert np.array_equal(np.asarray(row['image'].convert('RGB')), _rgb(f.read()))
    assert (row['id'], row['label'], row['label_name'], row['index']) == (
        f's{STEMS.index(stem)}r{index}', index % 3, NAMES[index % 3], index)
    assert row['source'] == os.path.join(source, f'{stem}.tfrecord')
  rows = outputs.manifest_rows(out)
  table = {s: pq.read_table(os.path.join(out, s)) for s in shards}
  for row in rows:
    image = table[row['shard']].column('image')[row['shard_row']].as_py()
    assert hashlib.sha256(image['bytes']).hexdigest() == row['sha256']
    assert image['bytes'] == encoded[(row['member'][:-7], row['index'])]
  index = json.load(open(os.path.join(out, 'shardindex.json')))
  assert sum(e['nsamples'] for e in index['shardlist']) == 12
  assert os.path.exists(os.path.join(out, '_SUCCESS'))


def test_a_corrupt_record_is_dead_lettered_and_its_neighbours_packed(unrecord, tmp_path):
  payloads = [fixtures.example({'image': fixtures.bytes_feature(
      fixtures.encode_png(fixtures.photo(i, 32, 32)))}) for i in range(5)]
  path = fixtures.write_tfrecord(str(tmp_path / 'in' / 'bad.tfrecord'), payloads)
  data = bytearray(open(path, 'rb').read())
  offset = sum(12 + len(p) + 4 for p in payloads[:2])  # record 2's frame
  data[offset + 12 + 40] ^= 0xFF  # a byte of its payload: its CRC no longer matches
  open(path, 'wb').write(bytes(data))
  out = str(tmp_path / 'out')
  _export(unrecord, '--input', path, '--output', out, '--pack', 'tar', expect=1)
  assert not os.path.exists(os.path.join(out, '_SUCCESS'))
  dead = [json.loads(line) for line in open(os.path.join(out, '_dead_letter.jsonl'))]
  assert [(d['source'], d['index'], d['offset'], d['reason']) for d in dead] == [
      (path, 2, offset, 'crc_mismatch')]
  import webdataset as wds
  samples = list(wds.WebDataset(os.path.join(out, 'bad-000000.tar'), shardshuffle=False))
  assert [s['__key__'] for s in samples] == [f'bad-{i:06d}' for i in (0, 1, 3, 4)]
  for sample in samples:
    index = int(sample['__key__'][-6:])
    assert np.array_equal(_rgb(sample['png']), fixtures.photo(index, 32, 32))


def _tensor_inputs(folder, count):
  photos = [fixtures.photo(i, 32, 32) for i in range(count)]
  half = count // 2
  for stem, chunk in (('a', photos[:half]), ('b', photos[half:])):
    fixtures.write_tfrecord(str(folder / f'{stem}.tfrecord'), [
        fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(p))})
        for p in chunk])
  return {('a', i): p for i, p in enumerate(photos[:half])} | {
      ('b', i): p for i, p in enumerate(photos[half:])}


def _check_tars(out, expected, per_shard):
  """Every expected image in its tar, pixel-exact; no temp file; a shard per
  `per_shard` images of each input."""
  import webdataset as wds
  shards = sorted(n for n in os.listdir(out) if n.endswith('.tar'))
  seen = {}
  for sample in wds.WebDataset([os.path.join(out, s) for s in shards], shardshuffle=False):
    stem, index = sample['__key__'].split('-')
    seen[(stem, int(index))] = _rgb(sample['png'])
  assert set(seen) == set(expected)
  for key, photo in expected.items():
    assert np.array_equal(seen[key], photo), key
  assert not [n for n in os.listdir(out) if n.endswith(root_files.TEMP_SUFFIX)]
  assert len(shards) == sum(-(-sum(1 for s, _ in expected if s == stem) // per_shard)
                            for stem in ('a', 'b'))
  return shards


def test_killed_mid_shard_leaves_no_partial_shard_and_a_rerun_finishes(unrecord,
                                                                       tmp_path):
  expected = _tensor_inputs(tmp_path, 1600)
  out = tmp_path / 'out'
  args = ['--input', str(tmp_path / '*.tfrecord'), '--output', str(out), '--pack', 'tar',
          '--shard_samples', '100', '--skip_existing', '--png_encoder', 'opencv']
  job = subprocess.Popen([sys.executable, '-m', 'beam_jobs.cli', 'export', *args],
                         cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
  deadline = time.time() + 120
  while time.time() < deadline and not (
      out.exists() and any(n.endswith('.tar') for n in os.listdir(out))):
    time.sleep(0.02)
  os.killpg(job.pid, signal.SIGKILL)  # the launcher and every worker process
  job.wait()
  finished = sorted(n for n in os.listdir(out) if n.endswith('.tar'))
  assert 0 < len(finished) < 16, 'the kill must land mid-run'
  before = {}
  for name in finished:  # each shard under a final name is whole
    with tarfile.open(out / name) as tar:
      assert len(tar.getmembers()) == 200, name
    before[name] = (out / name).read_bytes()
  assert not (out / '_SUCCESS').exists()

  _export(unrecord, *args)
  shards = _check_tars(str(out), expected, 100)
  assert len(shards) == 16
  for name, data in before.items():  # left in place, and equal to what it would write
    assert (out / name).read_bytes() == data
  report = json.loads((out / '_report.json').read_text())
  assert report['shards']['kept'] >= len(before)
  assert report['written'] + report['skipped'] == 1600
  rows = outputs.manifest_rows(str(out))
  assert len(rows) == 1600 and {r['shard'] for r in rows} == set(shards)


def test_incremental_and_overwrite_with_shards(unrecord, tmp_path):
  expected = _tensor_inputs(tmp_path / 'in', 40)
  out = tmp_path / 'out'
  base = ['--input', str(tmp_path / 'in'), '--output', str(out), '--shard_samples', '8']
  _export(unrecord, *base, '--pack', 'tar', '--incremental')
  assert len(_check_tars(str(out), expected, 8)) == 6
  a_shards = {n: (out / n).stat().st_mtime_ns for n in os.listdir(out)
              if n.startswith('a-')}
  # b.tfrecord changes: 4 images instead of 20. Only b's shards are written again, and
  # its shards beyond the first go.
  fresh = [fixtures.photo(100 + i, 32, 32) for i in range(4)]
  fixtures.write_tfrecord(str(tmp_path / 'in' / 'b.tfrecord'), [
      fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(p))})
      for p in fresh])
  _export(unrecord, *base, '--pack', 'tar', '--incremental')
  expected = {k: v for k, v in expected.items() if k[0] == 'a'} | {
      ('b', i): p for i, p in enumerate(fresh)}
  assert _check_tars(str(out), expected, 8)[-1] == 'b-000000.tar'
  assert {n: (out / n).stat().st_mtime_ns for n in os.listdir(out)
          if n.startswith('a-')} == a_shards
  index = json.loads((out / 'shardindex.json').read_text())
  assert [(e['url'], e['nsamples']) for e in index['shardlist']] == [
      ('a-000000.tar', 8), ('a-000001.tar', 8), ('a-000002.tar', 4), ('b-000000.tar', 4)]
  rows = outputs.manifest_rows(str(out))
  assert sorted((r['shard'], r['index']) for r in rows) == sorted(
      (f'{s}-{i // 8:06d}.tar', i) for s, i in expected)

  # Another pack into the same root needs --overwrite, which replaces the tars.
  _export(unrecord, *base, '--pack', 'parquet', expect=2)
  _export(unrecord, *base, '--pack', 'parquet', '--overwrite')
  listed = sorted(n for n in os.listdir(out) if not n.startswith('_'))
  assert listed == ['a-000000.parquet', 'a-000001.parquet', 'a-000002.parquet',
                    'b-000000.parquet', 'shardindex.json']
  assert len(outputs.manifest_rows(str(out))) == 24


@pytest.mark.parametrize('pack', ['tar', 'parquet'])
def test_a_plain_rerun_after_an_input_changes_leaves_no_stale_shard(unrecord, tmp_path,
                                                                      pack):
  """A plain nightly run (no --incremental) packs each input file it reads anew, whole:
  that file's earlier shards it does not write again hold only images it no longer
  makes, and go, from the root, the index and the manifest; the other file's stay."""
  expected = _tensor_inputs(tmp_path / 'in', 40)
  out = tmp_path / 'out'
  base = ['--input', str(tmp_path / 'in'), '--output', str(out), '--shard_samples', '8',
          '--pack', pack]
  _export(unrecord, *base)
  fresh = [fixtures.photo(200 + i, 32, 32) for i in range(4)]
  fixtures.write_tfrecord(str(tmp_path / 'in' / 'b.tfrecord'), [
      fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(p))})
      for p in fresh])
  _export(unrecord, *base)
  assert os.path.exists(out / '_SUCCESS')
  listed = sorted(n for n in os.listdir(out) if n.endswith('.' + pack))
  assert listed == [f'a-00000{k}.{pack}' for k in range(3)] + [f'b-000000.{pack}']
  index = json.loads((out / 'shardindex.json').read_text())
  assert [e['url'] for e in index['shardlist']] == listed
  rows = outputs.manifest_rows(str(out))
  assert sorted((r['shard'], r['index']) for r in rows) == sorted(
      [(f'a-{i // 8:06d}.{pack}', i) for i in range(20)] +
      [(f'b-000000.{pack}', i) for i in range(4)])
  images = {}
  for shard in listed:
    table = pq.read_table(out / shard) if pack == 'parquet' else None
    if table is not None:
      for key, image in zip(table.column('key').to_pylist(), table.column('image').to_pylist()):
        images[key] = _rgb(image['bytes'])
    else:
      with tarfile.open(out / shard) as tar:
        for member in tar.getmembers():
          if member.name.endswith('.png'):
            images[member.name[:-4]] = _rgb(tar.extractfile(member).read())
  want = {f'a-{i:06d}': p for (stem, i), p in expected.items() if stem == 'a'} | {
      f'b-{i:06d}': p for i, p in enumerate(fresh)}
  assert sorted(images) == sorted(want)
  for key, photo in want.items():
    assert np.array_equal(images[key], photo), key


def test_tar_shards_on_the_s3_emulator(unrecord, photos, tmp_path):
  source, names, _, encoded = photos
  with emulators.s3_server() as endpoint:
    s3 = emulators.s3_client(endpoint)
    s3.mkdir('shard-bucket')
    result = unrecord('export', '--input', source, '--output', 's3://shard-bucket/tars',
                      '--label_names', names, '--pack', 'tar', '--shard_samples', '4',
                      env=emulators.s3_env(endpoint))  # no proxy: the store is local
    assert result.returncode == 0, result.stderr[-4000:]
    listed = {p.split('tars/', 1)[1] for p in s3.find('shard-bucket/tars')}
    shards = sorted(p for p in listed if p.endswith('.tar'))
    assert shards == [f'{stem}-{k:06d}.tar' for stem in STEMS for k in range(2)]
    assert '_SUCCESS' in listed and 'shardindex.json' in listed
    assert not [p for p in listed if 'unrecord-tmp' in p]
    rows = [json.loads(line) for line in s3.cat_file(
        'shard-bucket/tars/_manifest/part-00000-of-00001.jsonl').splitlines()]
    assert len(rows) == 12
    for shard in shards:  # read back with webdataset from a local copy of each object
      s3.get_file(f'shard-bucket/tars/{shard}', str(tmp_path / shard))
    import webdataset as wds
    samples = list(wds.WebDataset([str(tmp_path / s) for s in shards], shardshuffle=False))
    assert len(samples) == 12
    for sample in samples:
      stem, index = sample['__key__'].rsplit('-', 1)
      assert sample['png'] == encoded[(stem, int(index))]
    for row in rows:
      data = s3.cat_file(f'shard-bucket/tars/{row["shard"]}', start=row['member_offset'],
                         end=row['member_offset'] + row['bytes'])
      assert hashlib.sha256(data).hexdigest() == row['sha256']


def _inspect(unrecord, *args):
  result = unrecord('inspect', *args)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.mark.parametrize('pack', ['tar', 'parquet'])
def test_inspect_shows_what_a_shard_output_holds(unrecord, photos, tmp_path, pack):
  source, names, files, encoded = photos
  out = str(tmp_path / pack)
  _export(unrecord, '--input', source, '--output', out, '--label_names', names,
          '--pack', pack, '--shard_samples', '4')
  index = json.load(open(os.path.join(out, 'shardindex.json')))
  rows = outputs.manifest_rows(out)
  shards = sorted({row['shard'] for row in rows})
  total = sum(os.path.getsize(os.path.join(out, s)) for s in shards)
  first = index['shardlist'][0]['url']

  text = _inspect(unrecord, '--input', out)
  kind = 'WebDataset tar shards' if pack == 'tar' else 'Parquet image shards'
  assert text.splitlines()[0] == (
      f'{kind} at {out}: {len(index["shardlist"])} shards, {len(rows)} samples, '
      f'{total:,} bytes (counts from shardindex.json)')
  assert len(shards) == 4 and len(rows) == 12
  assert f'first sample: {STEMS[0]}-000000 in {first}' in text
  height, width, _ = _rgb(encoded[(STEMS[0], 0)]).shape
  assert (f'{STEMS[0]}-000000.png: png {width}x{height}, '
          f'{len(encoded[(STEMS[0], 0)]):,} bytes') in text
  if pack == 'tar':
    assert 'members per sample: png, json, cls (4 samples of' in text
  else:
    assert 'image (struct<bytes: binary, path: string>; datasets Image)' in text

  found = json.loads(_inspect(unrecord, '--input', out, '--json'))
  assert (found['pack'], found['shards'], found['samples'], found['bytes']) == (
      pack, 4, 12, total)
  sample = found['sample']
  assert sample['key'] == f'{STEMS[0]}-000000'
  assert sample['image'] == {'member': f'{STEMS[0]}-000000.png', 'format': 'png',
                             'width': width, 'height': height,
                             'bytes': len(encoded[(STEMS[0], 0)])}
  meta = sample['json'] if pack == 'tar' else sample['metadata']
  first_row = next(r for r in rows if r['shard'] == first and r['index'] == 0)
  assert (meta['id'], meta['label'], meta['label_name'], meta['offset']) == (
      's0r0', 0, NAMES[0], first_row['offset'])
  assert meta['source'] == os.path.join(source, f'{STEMS[0]}.tfrecord')
  if pack == 'tar':
    assert sample['cls'] == '0'
    assert found['members_per_sample'] == [{'members': ['png', 'json', 'cls'],
                                            'samples': 4}]
  else:
    assert [c['name'] for c in found['columns']][:3] == ['image', 'key', 'id']
    assert found['rows_in_first_shard'] == 4

  # One shard file, and the index itself: the shard's own counts, read from it.
  last = shards[-1]
  one = json.loads(_inspect(unrecord, '--input', os.path.join(out, last), '--json'))
  assert (one['shards'], one['samples'], one['counts_from']) == (1, 2, 'counted')
  assert one['bytes'] == os.path.getsize(os.path.join(out, last))
  assert one['sample']['key'] == f'{STEMS[1]}-000004'
  by_index = json.loads(_inspect(unrecord, '--input',
                                 os.path.join(out, 'shardindex.json'), '--json'))
  assert (by_index['shards'], by_index['samples']) == (4, 12)


def _verify(unrecord, root, expect):
  result = unrecord('verify', root, '--json', '--quiet')
  assert result.returncode == expect, result.stdout[-3000:] + result.stderr[-3000:]
  return json.loads(result.stdout)


@pytest.mark.parametrize('pack, checksum, manifest_format', [
    ('tar', 'sha256', 'jsonl'), ('parquet', 'sha256', 'jsonl'),
    ('tar', 'crc32c', 'parquet')])
def test_verify_checks_each_member_inside_its_shard(unrecord, photos, tmp_path, pack,
                                                    checksum, manifest_format):
  source, names, _, encoded = photos
  out = str(tmp_path / pack)
  _export(unrecord, '--input', source, '--output', out, '--label_names', names,
          '--pack', pack, '--shard_samples', '4', '--checksum', checksum,
          '--manifest_format', manifest_format)
  clean = unrecord('verify', out, '--quiet')
  assert clean.returncode == 0, clean.stdout + clean.stderr
  assert clean.stdout.splitlines()[0] == f'unrecord verify: OK: {out}'
  assert '12 members of 4 shards' in clean.stdout
  summary = _verify(unrecord, out, 0)
  assert (summary['shards_checked'], summary['members_checked'], summary['rows'],
          summary['checksums']) == (4, 12, 12, {checksum: 12})
  assert summary['bytes_checked'] == sum(len(v) for v in encoded.values())

  rows = sorted(outputs.manifest_rows(out), key=lambda r: r['path'])
  shards = sorted({r['shard'] for r in rows})
  # A byte of one image flipped inside its shard; another shard deleted.
  hit = next(r for r in rows if r['shard'] == shards[1])
  path = os.path.join(out, hit['shard'])
  data = bytearray(open(path, 'rb').read())
  image = encoded[(hit['member'].rsplit('-', 1)[0], hit['index'])]
  start = hit['member_offset'] if pack == 'tar' else bytes(data).find(image)
  assert bytes(data[start:start + len(image)]) == image
  data[start + len(image) // 2] ^= 0x01
  open(path, 'wb').write(bytes(data))
  gone = shards[2]
  os.remove(os.path.join(out, gone))
  text = unrecord('verify', out, '--quiet')
  assert text.returncode == 1
  assert text.stdout.splitlines()[0] == f'unrecord verify: NOT WHOLE: {out}'
  summary = _verify(unrecord, out, 1)
  problems = {(p['kind'], p['path']) for p in summary['problems']}
  first_gone = sorted((r for r in rows if r['shard'] == gone),
                      key=lambda r: r['index'])[0]['member']
  assert problems == {('wrong_checksum', hit['path']), ('missing_shard', gone)}, problems
  detail = {p['kind']: p['detail'] for p in summary['problems']}
  assert detail['wrong_checksum'].startswith(
      f'{checksum} {hit[checksum]} in its row; its member in {hit["shard"]} has ')
  assert detail['missing_shard'] == (
      f'{sum(r["shard"] == gone for r in rows)} manifest rows name members of it '
      f'(first: {first_gone}); it is not there')
  assert f'wrong_checksum: {hit["shard"]}/{hit["member"]}: {checksum}' in text.stdout
  assert summary['shards_checked'] == 3


def test_verify_names_a_cut_tar_shard_and_its_lost_members(unrecord, photos, tmp_path):
  source, _, _, _ = photos
  out = str(tmp_path / 'cut')
  _export(unrecord, '--input', source, '--output', out, '--pack', 'tar',
          '--shard_samples', '6')
  rows = outputs.manifest_rows(out)
  shard = f'{STEMS[0]}-000000.tar'
  mine = sorted((r for r in rows if r['shard'] == shard), key=lambda r: r['index'])
  cut = mine[3]['member_offset'] + 100  # inside the fourth image
  path = os.path.join(out, shard)
  with open(path, 'r+b') as f:
    f.truncate(cut)
  summary = _verify(unrecord, out, 1)
  kinds = {}
  for problem in summary['problems']:
    kinds.setdefault(problem['kind'], []).append(problem['path'])
  assert kinds['damaged_shard'] == [shard]
  assert kinds['wrong_size'] == [shard]  # against shardindex.json's bytes
  # The members from the fourth on are lost, each named; the first three still check.
  assert sorted(kinds['missing_member']) == sorted(r['path'] for r in mine[3:])
  assert set(kinds) == {'damaged_shard', 'wrong_size', 'missing_member'}


# ---------------------------------------------------------------------------------------
# One large input file, cut into record ranges that each write their own shards

BIG = 400  # 64x64 photographs as raw tensors, about 4.9 MB: five ranges at 1 MB
CUT = ['--split_size_mb', '1', '--shard_size', '400KB']


def _big_payloads(count, first=0):
  return [fixtures.example({
      'image': fixtures.bytes_feature(fixtures.serialized_tensor(
          fixtures.photo(first + i, 64, 64))),
      'label': fixtures.int64_feature(i % 3)}) for i in range(count)]


@pytest.fixture(scope='module')
def big_file(tmp_path_factory):
  """One TensorFlow-written, uncompressed file of BIG photographs, and its file output
  (`--pack files`, the reference the shards' pixels are checked against)."""
  root = tmp_path_factory.mktemp('big_input')
  path = fixtures.write_tfrecord(str(root / 'in' / 'train.tfrecord'), _big_payloads(BIG))
  assert os.path.getsize(path) > 4 << 20
  files = str(root / 'files')
  from tests.conftest import run_unrecord
  result = run_unrecord('export', '--input', path, '--output', files, env=OFFLINE)
  assert result.returncode == 0, result.stderr[-3000:]
  return path, files


def _ranges_of(shards, stem):
  """{range k: its shards' numbers} from `{stem}-r{k:05d}-{shard:06d}` names, and how
  many ranges there are; every name must be one of those, ranges counted from 0 and
  each one's shards from 0, without gaps."""
  found = {}
  for name in shards:
    match = re.fullmatch(re.escape(stem) + r'-r(\d{5})-(\d{6})\.(tar|parquet)', name)
    assert match, name
    found.setdefault(int(match.group(1)), []).append(int(match.group(2)))
  assert sorted(found) == list(range(len(found))), sorted(found)
  for numbers in found.values():
    assert sorted(numbers) == list(range(len(numbers))), numbers
  return found, len(found)


def _read_back(out, pack, tmp_path):
  """(key, RGB pixels) of every sample, shard by shard in name order, read by the
  readers users train with: `webdataset` for tars, `datasets` for Parquet."""
  shards = sorted(n for n in os.listdir(out) if n.endswith('.' + pack))
  if pack == 'tar':
    import webdataset as wds
    return [(s['__key__'], _rgb(s['png'])) for s in wds.WebDataset(
        [os.path.join(out, s) for s in shards], shardshuffle=False)]
  import datasets
  loaded = datasets.load_dataset(
      'parquet', data_files=[os.path.join(out, s) for s in shards], split='train',
      cache_dir=str(tmp_path / 'hf'))
  return [(row['key'], np.asarray(row['image'].convert('RGB'))) for row in loaded]


def _member_bytes(out, row):
  """The image a manifest row names, read from its shard by the row's own place."""
  if row['shard'].endswith('.parquet'):
    table = pq.read_table(os.path.join(out, row['shard']))
    assert table.column('key')[row['shard_row']].as_py() == row['member']  # its key
    return table.column('image')[row['shard_row']].as_py()['bytes']
  with tarfile.open(os.path.join(out, row['shard'])) as tar:
    assert tar.getmember(row['member']).offset_data == row['member_offset']
    return tar.extractfile(row['member']).read()


@pytest.mark.parametrize('pack', ['tar', 'parquet'])
def test_a_large_file_is_cut_into_ranges_that_each_write_their_own_shards(
    unrecord, big_file, tmp_path, pack):
  path, files = big_file
  out = str(tmp_path / 'out')
  _export(unrecord, '--input', path, '--output', out, '--pack', pack, *CUT)
  shards = sorted(n for n in os.listdir(out) if n.endswith('.' + pack))
  _, count = _ranges_of(shards, 'train')
  # Several ranges, each one task of the job, each numbering its shards from 0.
  report = json.load(open(os.path.join(out, '_report.json')))
  assert count == report['work']['ranges'] >= 4
  assert report['shards']['shards'] == len(shards) > count
  for name in shards:
    assert os.path.getsize(os.path.join(out, name)) <= 400_000, name

  # Read back by a real reader: every image once, in record order across the ranges'
  # shards, pixel-exact against the file output of the same input.
  samples = _read_back(out, pack, tmp_path)
  assert [key for key, _ in samples] == [f'train-{i:06d}' for i in range(BIG)]
  for key, pixels in samples:
    with open(os.path.join(files, f'{key}.png'), 'rb') as f:
      assert np.array_equal(pixels, _rgb(f.read())), key

  # The manifest names each image's shard and member, and where it is in it.
  rows = outputs.manifest_rows(out)
  assert sorted(r['index'] for r in rows) == list(range(BIG))
  for row in rows:
    data = _member_bytes(out, row)
    assert hashlib.sha256(data).hexdigest() == row['sha256']
    assert row['path'] == f'{row["shard"]}/{row["member"]}'
    key = f'train-{row["index"]:06d}'
    assert row['member'] == (f'{key}.png' if pack == 'tar' else key)
  assert {r['shard'] for r in rows} == set(shards)
  index = json.load(open(os.path.join(out, 'shardindex.json')))
  assert [e['url'] for e in index['shardlist']] == shards  # each once, in record order
  assert [e['nsamples'] for e in index['shardlist']] == [
      sum(r['shard'] == s for r in rows) for s in shards]
  summary = _verify(unrecord, out, 0)
  assert (summary['shards_checked'], summary['members_checked']) == (len(shards), BIG)
  inspected = json.loads(_inspect(unrecord, '--input', out, '--json'))
  assert (inspected['shards'], inspected['samples']) == (len(shards), BIG)
  assert inspected['sample']['key'] == 'train-000000'

  # The same run again writes the same shards, byte for byte; into the same root with
  # --skip_existing it keeps every one of them.
  again = str(tmp_path / 'again')
  _export(unrecord, '--input', path, '--output', again, '--pack', pack, *CUT)
  assert sorted(n for n in os.listdir(again) if n.endswith('.' + pack)) == shards
  for name in shards:
    with open(os.path.join(out, name), 'rb') as a, open(os.path.join(again, name),
                                                        'rb') as b:
      assert a.read() == b.read(), name
  _export(unrecord, '--input', path, '--output', out, '--pack', pack, *CUT,
          '--skip_existing')
  report = json.load(open(os.path.join(out, '_report.json')))
  assert (report['shards']['kept'], report['shards']['written']) == (len(shards), 0)
  assert sorted(n for n in os.listdir(out) if n.endswith('.' + pack)) == shards


def test_incremental_rewrites_every_range_of_a_changed_file_and_leaves_none_stale(
    unrecord, big_file, tmp_path):
  path, _ = big_file
  folder = tmp_path / 'in'
  folder.mkdir()
  with open(path, 'rb') as f:
    (folder / 'train.tfrecord').write_bytes(f.read())
  fixtures.write_tfrecord(str(folder / 'extra.tfrecord'), _big_payloads(20, first=900))
  out = tmp_path / 'out'
  args = ['--input', str(folder), '--output', str(out), '--pack', 'tar', *CUT,
          '--incremental']
  _export(unrecord, *args)
  before = sorted(n for n in os.listdir(out) if n.startswith('train-'))
  assert _ranges_of(before, 'train')[1] >= 4
  extra = {n: (out / n).stat().st_mtime_ns for n in os.listdir(out)
           if n.startswith('extra-')}
  assert sorted(extra) == ['extra-000000.tar']  # a small file: one range, plain names

  # train.tfrecord changes: 250 other photographs, so fewer ranges.
  old = {n: (out / n).read_bytes() for n in before}
  fixtures.write_tfrecord(str(folder / 'train.tfrecord'), _big_payloads(250, first=500))
  _export(unrecord, *args)
  after = sorted(n for n in os.listdir(out) if n.startswith('train-'))
  assert 2 <= _ranges_of(after, 'train')[1] < _ranges_of(before, 'train')[1]
  # Every shard of every range is written again, and the names of the ranges (and
  # shards) it no longer has are gone: none is left on disk, in the index or read back
  # below.
  assert all((out / n).read_bytes() != old[n] for n in after)
  assert set(after) < set(before)
  assert {n: (out / n).stat().st_mtime_ns for n in os.listdir(out)
          if n.startswith('extra-')} == extra  # the unchanged file's shard untouched
  assert not [n for n in os.listdir(out) if n.endswith(root_files.TEMP_SUFFIX)]
  samples = _read_back(str(out), 'tar', tmp_path)
  expected = {f'extra-{i:06d}': fixtures.photo(900 + i, 64, 64) for i in range(20)} | {
      f'train-{i:06d}': fixtures.photo(500 + i, 64, 64) for i in range(250)}
  assert sorted(key for key, _ in samples) == sorted(expected)
  for key, pixels in samples:
    assert np.array_equal(pixels, expected[key]), key
  index = json.loads((out / 'shardindex.json').read_text())
  assert [e['url'] for e in index['shardlist']] == ['extra-000000.tar'] + after
  rows = outputs.manifest_rows(str(out))
  assert sorted(r['member'][:-4] for r in rows) == sorted(expected)
  assert {r['shard'] for r in rows} == {'extra-000000.tar', *after}
  _verify(unrecord, str(out), 0)

  # The cuts follow --split_size_mb, so another value is another export: a plain run
  # is refused, and --incremental writes every file's shards again.
  coarse = ['--input', str(folder), '--output', str(out), '--pack', 'tar',
            '--split_size_mb', '2', '--shard_size', '400KB']
  refused = _export(unrecord, *coarse, expect=2)
  assert '--split_size_mb 1 then, 2 now' in refused.stderr
  _export(unrecord, *coarse, '--incremental')
  coarser = sorted(n for n in os.listdir(out) if n.startswith('train-'))
  assert 2 <= _ranges_of(coarser, 'train')[1] < _ranges_of(after, 'train')[1]
  assert sorted(n for n in os.listdir(out) if n.endswith('.tar')) == sorted(
      ['extra-000000.tar', *coarser])
  assert [e['url'] for e in json.loads((out / 'shardindex.json').read_text())[
      'shardlist']] == ['extra-000000.tar'] + coarser
  assert sorted(r['member'][:-4] for r in outputs.manifest_rows(str(out))) == sorted(
      expected)
  assert (out / 'extra-000000.tar').stat().st_mtime_ns != extra['extra-000000.tar']
