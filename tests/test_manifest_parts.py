"""The manifest's parts through the whole job, on TensorFlow-written records of photos:
part layout and order, Parquet read by pyarrow and DuckDB, an earlier version's single
`_manifest.jsonl` carried over, and a commit a killed run left half done."""

import json
import os
import shutil

import cv2
import duckdb
import numpy as np
import pyarrow.dataset as ds
import pytest

from tests import fixtures
from tests import outputs
from transforms.output import manifest
from tests.test_export_job import OFFLINE, _files

PHOTOS = 24


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
  """Two shards of labelled photos, uint8 tensors; {(shard stem, index): photo}."""
  root = tmp_path_factory.mktemp('parts_in')
  photos = {}
  for shard in range(2):
    payloads = []
    for i in range(PHOTOS // 2):
      photo = fixtures.photo(shard * 12 + i, 24, 20)
      photos[(f'cam-{shard}', i)] = photo
      payloads.append(fixtures.example({
          'image': fixtures.bytes_feature(fixtures.serialized_tensor(photo)),
          'label': fixtures.int64_feature(i % 3)}))
    fixtures.write_tfrecord(str(root / f'cam-{shard}.tfrecord'), payloads)
  return str(root), photos


def _run(unrecord, inputs, out, *args, expect=0):
  result = unrecord('export', '--input', os.path.join(inputs, '*.tfrecord'), '--output',
                    str(out), *args, env=OFFLINE)
  assert result.returncode == expect, result.stderr[-4000:]
  return result


def _images(out):
  return {f for f in _files(out) if not f.startswith('_')}


def _check_rows_are_the_files(out, photos):
  """Every row names a file whose bytes and pixels it describes; every file has a row."""
  rows = outputs.manifest_rows(out)
  assert [r['path'] for r in rows] == sorted(_images(out))
  for row in rows:
    data = open(os.path.join(out, row['path']), 'rb').read()
    assert row['bytes'] == len(data)
    stem = os.path.basename(row['source']).split('.')[0]
    pixels = cv2.cvtColor(cv2.imread(os.path.join(out, row['path'])), cv2.COLOR_BGR2RGB)
    assert np.array_equal(pixels, photos[(stem, row['index'])]), row['path']
  return rows


def test_parts_cover_ordered_path_ranges_and_list_every_image(unrecord, shards, tmp_path):
  inputs, photos = shards
  out = tmp_path / 'out'
  _run(unrecord, inputs, out, '--manifest_part_rows', '5')
  parts = outputs.manifest_parts(out)
  assert len(parts) >= 4  # 24 rows, about 5 a part
  assert [os.path.basename(p) for p in parts] == [
      f'part-{i:05d}-of-{len(parts):05d}.jsonl' for i in range(len(parts))]
  ranges = []
  for part in parts:
    paths = [json.loads(line)['path'] for line in open(part, encoding='utf-8')]
    assert paths == sorted(paths) and paths, part
    ranges.append((paths[0], paths[-1]))
  assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))  # disjoint, in order
  rows = _check_rows_are_the_files(out, photos)
  assert len(rows) == PHOTOS
  index = json.load(open(out / '_manifest' / '_parts.json'))
  assert index['rows'] == PHOTOS and [p['rows'] for p in index['parts']] == [
      sum(1 for _ in open(p)) for p in parts]
  report = json.load(open(out / '_report.json'))
  assert report['manifest']['parts'] == len(parts) and report['written'] == PHOTOS
  assert (out / '_SUCCESS').exists()


def test_parquet_parts_read_as_one_dataset_in_pyarrow_and_duckdb(unrecord, shards,
                                                                  tmp_path):
  inputs, photos = shards
  out = tmp_path / 'out'
  _run(unrecord, inputs, out, '--manifest_format', 'parquet', '--manifest_part_rows', '8',
       '--label_key', 'label')
  table = ds.dataset(str(out / '_manifest')).to_table()  # as docs/output.md says, no options
  assert table.num_rows == PHOTOS
  assert str(table.schema.field('index').type) == 'int64'
  assert str(table.schema.field('shape_out').type) == 'list<element: int64>'
  rows = _check_rows_are_the_files(out, photos)
  assert {r['label'] for r in rows} == {'0', '1', '2'}  # text, whatever the feature type
  parts = str(out / '_manifest' / '*.parquet')
  counts = duckdb.sql(f"SELECT label, count(*) FROM read_parquet('{parts}') "
                      'GROUP BY label ORDER BY label').fetchall()
  assert counts == [('0', 8), ('1', 8), ('2', 8)]
  # Parts read in name order, each in its row order, give every path sorted.
  assert table.column('path').to_pylist() == sorted(_images(out))
  (ordered,), = duckdb.sql(
      f"SELECT list(path ORDER BY filename, file_row_number) FROM "
      f"read_parquet('{parts}', filename=true, file_row_number=true)").fetchall()
  assert ordered == sorted(_images(out))
  jsonl = tmp_path / 'jsonl'
  _run(unrecord, inputs, jsonl, '--label_key', 'label')
  as_json = outputs.manifest_rows(jsonl)  # the same rows, with the label's own type
  # Parquet's fixed schema has the shard columns of a --pack root, null for files.
  assert all(r[field] is None for r in rows for field in manifest.SHARD_FIELDS)
  rows = [{k: v for k, v in r.items() if k not in manifest.SHARD_FIELDS} for r in rows]
  assert [{**r, 'label': str(r['label'])} for r in as_json] == rows


def _as_earlier_version_wrote_it(out):
  """The root as the single-file version left it: `_manifest.jsonl` holding the rows
  as `json.dumps(row, sort_keys=True, ensure_ascii=False)` lines, sorted by path."""
  rows = outputs.manifest_rows(out)
  shutil.rmtree(out / '_manifest')
  with open(out / '_manifest.jsonl', 'w', encoding='utf-8') as f:
    for row in rows:
      f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + '\n')
  return rows


@pytest.mark.parametrize('mode', ['--skip_existing', '--incremental', 'plain'])
def test_a_root_with_an_earlier_single_manifest_keeps_working(unrecord, shards, tmp_path,
                                                              mode):
  """The next run reads the single file's rows, writes parts (here in Parquet) and
  removes the file. --incremental: a new shard arrives, the old shards' rows stay."""
  source, photos = shards
  inputs = tmp_path / 'in'
  shutil.copytree(source, inputs)
  out = tmp_path / 'out'
  extra = () if mode == 'plain' else (mode,)
  _run(unrecord, str(inputs), out, *extra)
  before = _as_earlier_version_wrote_it(out)
  images = {p: open(out / p, 'rb').read() for p in _images(out)}
  added = {}
  if mode == '--incremental':
    payloads = []
    for i in range(6):
      added[('cam-2', i)] = fixtures.photo(30 + i, 24, 20)
      payloads.append(fixtures.example({
          'image': fixtures.bytes_feature(fixtures.serialized_tensor(added[('cam-2', i)])),
          'label': fixtures.int64_feature(i % 3)}))
    fixtures.write_tfrecord(str(inputs / 'cam-2.tfrecord'), payloads)
  _run(unrecord, str(inputs), out, *extra, '--manifest_format', 'parquet')
  assert not (out / '_manifest.jsonl').exists()
  after = {r['path']: r for r in outputs.manifest_rows(out)}
  assert sorted(after) == sorted([r['path'] for r in before] +
                                 [f'cam-2-{i:06d}.png' for _, i in added])
  for old in before:  # every earlier row carried over (id and label become text)
    new = after[old['path']]
    assert all(new[field] is None for field in manifest.SHARD_FIELDS)  # files, no shards
    assert {k: v for k, v in old.items() if k not in ('label', 'id')} == {
        k: v for k, v in new.items() if k not in ('label', 'id', *manifest.SHARD_FIELDS)}
  assert {p: open(out / p, 'rb').read() for p in images} == images
  report = json.load(open(out / '_report.json'))
  assert report['written'] + report['skipped'] == (6 if added else PHOTOS)
  _check_rows_are_the_files(out, {**photos, **added})


def test_a_commit_cut_short_by_a_kill_is_finished_by_the_next_run(unrecord, shards,
                                                                   tmp_path):
  inputs, photos = shards
  out = tmp_path / 'out'
  _run(unrecord, inputs, out, '--manifest_part_rows', '6')
  first = outputs.manifest_rows(out)
  # What a kill between the journal and the moves leaves: the new parts staged and
  # listed in the journal, the old parts (of another count) still in place.
  parts = outputs.manifest_parts(out)
  staged = out / '_manifest' / '_staged'
  staged.mkdir()
  merged = b''.join(open(p, 'rb').read() for p in parts)
  (staged / 'part-00000-of-00001.jsonl').write_bytes(merged)
  (staged / '_commit.json').write_text(json.dumps({'format': 'jsonl', 'rows': len(first),
      'parts': [{'name': 'part-00000-of-00001.jsonl', 'rows': len(first),
                 'first': first[0]['path'], 'last': first[-1]['path']}]}))
  (out / '_SUCCESS').unlink()
  _run(unrecord, inputs, out, '--skip_existing')
  assert outputs.manifest_rows(out) == first
  assert not staged.exists()
  assert (out / '_SUCCESS').exists()


def test_parts_left_staged_by_a_run_killed_before_its_commit_are_dropped(unrecord, shards,
                                                                         tmp_path):
  inputs, photos = shards
  out = tmp_path / 'out'
  _run(unrecord, inputs, out)
  first = outputs.manifest_rows(out)
  staged = out / '_manifest' / '_staged'
  staged.mkdir()
  (staged / 'part-00000-of-00003.jsonl').write_bytes(b'{"path": "not-an-image.png"}\n')
  _run(unrecord, inputs, out, '--skip_existing')
  assert outputs.manifest_rows(out) == first and not staged.exists()


def test_one_name_for_many_images_collides_each_with_a_bounded_message(unrecord, shards,
                                                                       tmp_path):
  """24 photos named by their shard alone (12 per name, Parquet manifest): each name's
  file holds one of its images, the manifest lists it, and the 11 others are each a
  `name_collision` row whose message names 10 of the images, then "and 2 more"."""
  inputs, photos = shards
  out = tmp_path / 'out'
  result = _run(unrecord, inputs, out, '--manifest_format', 'parquet',
                '--name_template', '{stem}.{ext}', expect=1)
  rows = _check_rows_are_the_files(out, photos)
  assert [r['path'] for r in rows] == ['cam-0.png', 'cam-1.png']
  dead = [json.loads(line) for line in open(out / '_dead_letter.jsonl')]
  assert len(dead) == PHOTOS - 2
  assert {d['reason'] for d in dead} == {'name_collision'}
  listed = {(r['source'], r['index']) for r in rows}
  failed = {(d['source'], d['index']) for d in dead}
  assert not listed & failed and len(listed | failed) == PHOTOS  # each image once
  for row in dead:
    shard = os.path.basename(row['source']).split('.')[0]
    assert f"output name '{shard}.png' is taken" in row['message'], row['message']
    named = row['message'].split('(', 1)[1].split(')', 1)[0]
    assert named.count(' record ') == 10 and named.endswith(' and 2 more'), named
  report = json.load(open(out / '_report.json'))
  assert (report['written'], report['failed']) == (2, PHOTOS - 2)
  assert not (out / '_SUCCESS').exists()  # 22 failures, more than --max_failures' 0
  assert 'name_collision' in result.stdout + result.stderr


def test_parquet_parts_carry_over_through_incremental_and_back_to_jsonl(unrecord, shards,
                                                                        tmp_path):
  """A Parquet root's rows are carried as typed columns by --incremental (a new shard
  added), and read again by a JSONL run with --skip_existing; rows equal the files."""
  source, photos = shards
  inputs = tmp_path / 'in'
  shutil.copytree(source, inputs)
  out = tmp_path / 'out'
  _run(unrecord, str(inputs), out, '--incremental', '--manifest_format', 'parquet',
       '--label_key', 'label', '--manifest_part_rows', '7')
  first = {r['path']: r for r in outputs.manifest_rows(out)}
  added = {('cam-2', i): fixtures.photo(40 + i, 24, 20) for i in range(5)}
  fixtures.write_tfrecord(str(inputs / 'cam-2.tfrecord'), [fixtures.example({
      'image': fixtures.bytes_feature(fixtures.serialized_tensor(added[('cam-2', i)])),
      'label': fixtures.int64_feature(i % 3)}) for i in range(5)])
  _run(unrecord, str(inputs), out, '--incremental', '--manifest_format', 'parquet',
       '--label_key', 'label', '--manifest_part_rows', '7')
  second = {r['path']: r for r in outputs.manifest_rows(out)}
  assert {p: second[p] for p in first} == first  # carried over, every column
  assert len(second) == PHOTOS + 5 and report_counts(out) == (5, 0)
  _run(unrecord, str(inputs), out, '--skip_existing', '--label_key', 'label')
  third = outputs.manifest_rows(out)
  assert all(p.endswith('.jsonl') for p in outputs.manifest_parts(out))
  assert [r['path'] for r in third] == sorted(second)
  assert {r['path']: r['sha256'] for r in third} == {
      p: r['sha256'] for p, r in second.items()}
  assert report_counts(out) == (0, PHOTOS + 5)
  _check_rows_are_the_files(out, {**photos, **added})


def report_counts(out):
  report = json.load(open(out / '_report.json'))
  return report['written'], report['skipped']


def test_the_previous_rows_step_runs_only_where_a_manifest_may_be(tmp_path):
  """A fresh root has no previous rows to read: its pipeline leaves that step out (two
  stages of start-up). Parts, a killed commit's staged files or an old single manifest
  each keep it."""
  import apache_beam as beam
  from transforms import ptransforms
  from transforms.output import export_config
  from transforms.output import manifest
  from transforms.output import root_files

  def labels(previous_manifest):
    config = export_config.ExportConfig(patterns=(str(tmp_path / 'in*'),),
                                        output=str(tmp_path / 'out'),
                                        previous_manifest=previous_manifest)
    pipeline = beam.Pipeline()
    _ = pipeline | 'Export' >> ptransforms.ExportImages(config)
    return {t.unique_name for t in pipeline.to_runner_api().components.transforms.values()}

  assert not any('ListPrevious' in label for label in labels(False))
  assert any('ListPrevious' in label for label in labels(True))
  root = root_files.OutputRoot(str(tmp_path / 'root'))
  os.makedirs(tmp_path / 'root')
  assert not manifest.any_previous(root)
  for made in ('_manifest/_parts.json', '_manifest/_staged/_commit.json',
               '_manifest.jsonl'):
    os.makedirs(os.path.dirname(tmp_path / 'root' / made), exist_ok=True)
    (tmp_path / 'root' / made).write_text('{}')
    assert manifest.any_previous(root), made
    shutil.rmtree(tmp_path / 'root')
    os.makedirs(tmp_path / 'root')
