"""The manifest's sorted runs, their merge into parts and the commit
(transforms/output/manifest.py, transforms/output/sorted_runs.py), without Beam."""

import dataclasses
import hashlib
import itertools
import json
import math
import os
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import outputs
from transforms import export
from transforms.images import decode
from transforms.images import render
from transforms.inputs import tfrecord
from transforms.output import export_config
from transforms.output import manifest
from transforms.output import root_files
from transforms.output import sorted_runs


def _row(path, source='s.tfrecord', index=0, n=0, size=10, label=None, sha='x',
         passthrough=False, encoder='opencv'):
  """A row as a run makes it (every such row names its encoder; a rebuilt one none)."""
  return {'path': path, 'source': source, 'index': index, 'offset': 0, 'n': n, 'bytes': size,
          'label': label, 'label_name': None, 'sha256': sha, 'passthrough': passthrough,
          'encoder': encoder}


def _line(row):
  return manifest.manifest_line(row)


_KEYS = tuple(_row('x'))
JSONL = manifest.ENTRY_SCHEMAS['jsonl']


def _seen(row):
  """The keys a test row has, as a manifest of either format gives them back."""
  return {k: row.get(k) for k in _KEYS}


def _tuple(kind, row):
  """A JSONL entry, in ENTRY_SCHEMAS['jsonl']'s column order."""
  return (row['path'], kind, f'{row["source"]}\x01{row["index"]}\x01{row["n"]}',
          '' if row.get('label') is None else str(row['label']), row.get('bytes'),
          bool(row.get('passthrough')), _line(row))


def _entry(kind, row):
  return kind, row


def _table(entries, output_format):
  if output_format == 'jsonl':
    columns = list(zip(*[_tuple(k, r) for k, r in entries])) or [[] for _ in JSONL]
    table = pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, JSONL)],
                                 schema=JSONL)
  else:  # the way previous_runs makes Parquet entries, a table per entry
    tables = [manifest._as_entries(pa.Table.from_pylist(  # pylint: disable=protected-access
        [manifest._with_text_fields(dict(r))], schema=manifest.PARQUET_SCHEMA), kind)  # pylint: disable=protected-access
        for kind, r in entries]
    table = (pa.concat_tables(tables) if tables
             else manifest.ENTRY_SCHEMAS['parquet'].empty_table())
  return table.sort_by([('path', 'ascending'), ('kind', 'ascending')])


def _merge(entries, keep_previous=lambda source: False, on_disk=None, output_format='jsonl'):
  table = _table(entries, output_format)
  keep, sampled_as, sampled, result = manifest.decide(
      table, keep_previous=keep_previous,
      on_disk_sha256=lambda path: (on_disk or {}).get(path))
  lines = [manifest._line_at(table, i) for i in range(table.num_rows)]  # pylint: disable=protected-access
  classes = table.column('class_key').to_pylist()
  rows = [_seen(json.loads(line)) for line, k in zip(lines, keep) if k]
  seen = [sampled_as.get(i, (classes[i], lines[i])) for i in range(len(lines)) if sampled[i]]
  for collision in result.collisions:
    collision.kept = collision.kept and _seen(collision.kept)
    collision.others = [_seen(r) for r in collision.others]
  return rows, result, [(c, json.loads(line)['path']) for c, line in seen]


formats = pytest.mark.parametrize('output_format', export_config.MANIFEST_FORMATS)


def _config(out, **options):
  return export_config.ExportConfig(patterns=('x',), output=str(out), **options)


def test_runs_are_sorted_files_and_merge_back_in_key_order(tmp_path):
  root = root_files.OutputRoot(str(tmp_path))
  writer = sorted_runs.RunWriter(root, JSONL, run_bytes=2_000, group_rows=3, block_rows=2)
  paths = [f'{c}/img-{i:04d}.png' for i in range(300, 0, -1) for c in 'ba']
  for path in paths:
    writer.add(_tuple(manifest.WRITTEN, _row(path)), 100)
  written = writer.flush()
  assert len(written) > 10  # small runs, so the merge below needs intermediate levels
  for run in written:
    keys = [row[0] for row in sorted_runs.rows_of(root, run)]
    assert keys == sorted(keys) and len(keys) == run.rows == sum(run.group_rows)
    assert list(run.firsts) == keys[::3]
    with pa.ipc.open_file(tmp_path / run.name) as stored:  # groups of 3 as batches of 2, 1
      assert [stored.get_batch(i).num_rows for i in range(stored.num_record_batches)] == [
          rows for _, rows, _ in run.blocks()] == [2, 1] * (run.rows // 3) + (
              [min(2, run.rows % 3)] if run.rows % 3 else [])
  merged = [row[0] for row in sorted_runs.merged(root, written, JSONL, fan_in=3)]
  assert merged == sorted(paths)
  assert writer.flush() == []  # flush hands the runs over once


def test_a_run_read_back_short_fails_loudly(tmp_path):
  root = root_files.OutputRoot(str(tmp_path))
  writer = sorted_runs.RunWriter(root, JSONL)
  for path in ('a.png', 'b.png'):
    writer.add(_tuple(manifest.WRITTEN, _row(path)), 100)
  [run] = writer.flush()
  short = dataclasses.replace(run, group_rows=(3,))
  with pytest.raises(OSError, match='read back 2 rows of 3'):
    list(sorted_runs.rows_of(root, short))
  missing = dataclasses.replace(run, firsts=('a.png', 'b.png'), group_rows=(1, 1))
  with pytest.raises(OSError, match='holds 1 batches of 2'):
    sorted_runs.RangeReader(root, missing, None, None).until(None)


def test_a_range_reader_opens_its_run_only_when_a_range_wants_its_rows(tmp_path):
  root = root_files.OutputRoot(str(tmp_path))
  writer = sorted_runs.RunWriter(root, JSONL, group_rows=4, block_rows=2)
  paths = [f'm/{i:02d}.png' for i in range(10)]
  for path in paths:
    writer.add(_tuple(manifest.WRITTEN, _row(path)), 100)
  [run] = writer.flush()
  reader = sorted_runs.RangeReader(root, run, 'm/01.png', 'm/09.png')
  with mock.patch.object(root, 'open_read', wraps=root.open_read) as opened:
    assert reader.until('a') == [] and opened.call_count == 0  # below every path
    taken = [reader.until(key) for key in ('m/05.png', 'm/05.png', None, None)]
    assert opened.call_count == 1
  keys = [[key for batch in batches for key in batch.column(0).to_pylist()]
          for batches in taken]
  assert keys == [paths[1:5], [], paths[5:9], []]


def _expect(output_format, *rows):
  """The rows as the manifest gives them back (Parquet holds labels and ids as text)."""
  return [_seen(manifest._with_text_fields(dict(r)) if output_format == 'parquet' else r)  # pylint: disable=protected-access
          for r in rows]


@formats
def test_one_image_per_path_is_written_with_totals_and_samples(output_format):
  rows, result, seen = _merge([
      _entry(manifest.WRITTEN, _row('b.png', index=1, size=7, label=3)),
      _entry(manifest.WRITTEN, _row('a.png', index=0, size=5, passthrough=True)),
  ], output_format=output_format)
  assert [r['path'] for r in rows] == ['a.png', 'b.png']
  assert rows[1]['label'] == (3 if output_format == 'jsonl' else '3')
  assert (result.written, result.bytes, result.passthrough) == (2, 12, 1)
  assert seen == [('', 'a.png'), ('3', 'b.png')]


@formats
def test_a_replayed_image_gives_one_row_and_different_images_one_name_collide(
    output_format):
  replay = _row('same.png', index=4)
  first, second = _row('two.png', index=1, sha='aa'), _row('two.png', index=2, sha='bb')
  rows, result, _ = _merge(
      [_entry(manifest.WRITTEN, replay), _entry(manifest.WRITTEN, replay),
       _entry(manifest.WRITTEN, first), _entry(manifest.WRITTEN, second)],
      on_disk={'two.png': 'bb'}, output_format=output_format)
  assert rows == _expect(output_format, replay, second)  # the file on disk's row stays
  assert result.written == 2
  [collision] = result.collisions
  assert (collision.path, [collision.kept], collision.others) == (
      'two.png', _expect(output_format, second), _expect(output_format, first))


@formats
def test_an_image_skipped_for_a_file_another_image_of_the_run_wrote_collides(
    output_format):
  first = _row('two.png', index=1, sha='aa')
  skipped_second = _row('two.png', index=2, sha='aa')  # its row is made from that file
  replay = _row('one.png', index=3, sha='cc')  # a retried bundle skips its own file
  rows, result, _ = _merge(
      [_entry(manifest.WRITTEN, first), _entry(manifest.SKIPPED, skipped_second),
       _entry(manifest.WRITTEN, replay), _entry(manifest.SKIPPED, replay)],
      on_disk={'two.png': 'aa', 'one.png': 'cc'}, output_format=output_format)
  assert rows == _expect(output_format, replay, first)
  assert (result.written, result.skipped) == (2, 0)
  [collision] = result.collisions
  assert (collision.path, [collision.kept], collision.others, collision.skipped) == (
      'two.png', _expect(output_format, first), _expect(output_format, skipped_second), 1)


@formats
def test_a_collision_whose_file_matches_no_row_keeps_none(output_format):
  rows, result, _ = _merge(
      [_entry(manifest.WRITTEN, _row('x.png', index=1, sha='aa')),
       _entry(manifest.WRITTEN, _row('x.png', index=2, sha='bb'))],
      on_disk={'x.png': hashlib.sha256(b'other').hexdigest()}, output_format=output_format)
  assert rows == [] and result.written == 0
  assert result.collisions[0].kept is None and len(result.collisions[0].others) == 2


@formats
def test_skipped_images_keep_the_previous_row_and_previous_rows_stay_or_go(output_format):
  old = _row('kept.png', source='old', sha='from-last-run')
  skipped_new = _row('kept.png', source='old', sha='from-file')
  lonely_skip = _row('killed-run.png', sha='from-file')
  unchanged = _row('other-shard.png', source='unchanged')
  also_unchanged = _row('other-shard2.png', source='unchanged', index=1)
  gone = _row('stale.png', source='changed')
  entries = [_entry(manifest.PREVIOUS, old), _entry(manifest.SKIPPED, skipped_new),
             _entry(manifest.SKIPPED, lonely_skip), _entry(manifest.PREVIOUS, unchanged),
             _entry(manifest.PREVIOUS, gone), _entry(manifest.PREVIOUS, also_unchanged)]
  asked = []

  def keep_previous(source):
    asked.append(source)
    return source != 'changed'

  rows, result, seen = _merge(entries, keep_previous=keep_previous,
                              output_format=output_format)
  assert rows == _expect(output_format, old, lonely_skip, unchanged, also_unchanged)
  assert (result.skipped, result.kept_from_previous, result.stale) == (2, 2, ['stale.png'])
  assert [path for _, path in seen] == ['kept.png', 'killed-run.png']
  assert sorted(asked) == ['changed', 'unchanged']  # once per source file, not per row


@formats
def test_a_skipped_image_prefers_its_own_row_to_one_rebuilt_from_a_shard(output_format):
  """A row rebuilt from a shard's sample has its record's source but no encoder: the
  row --skip_existing makes again from the record knows more, and wins."""
  rebuilt = _row('a.tar/a.png', source='old', sha='s', encoder=None)
  skipped = _row('a.tar/a.png', source='old', sha='s')
  rows, result, _ = _merge([_entry(manifest.PREVIOUS, rebuilt),
                            _entry(manifest.SKIPPED, skipped)], output_format=output_format)
  assert rows == _expect(output_format, skipped) and result.skipped == 1


@formats
def test_previous_manifest_lines_become_entries_and_bad_lines_are_dropped(tmp_path,
                                                                          output_format):
  good = _row('a.png', label=7)
  also_good = _row('b.png', index=1)
  os.makedirs(tmp_path / '_manifest')
  (tmp_path / '_manifest.jsonl').write_bytes(
      json.dumps(good).encode() + b'\nnot json\n{"no": "path"}\n[1, 2]\n'
      b'{"path": 5, "source": "s", "index": 0, "n": 0}\n' + json.dumps(also_good).encode())
  root = root_files.OutputRoot(str(tmp_path))
  assert manifest.part_files(root) == ['_manifest.jsonl']
  [run] = manifest.previous_runs('_manifest.jsonl',
                                 _config(tmp_path, manifest_format=output_format))
  entries = list(sorted_runs.rows_of(root, run))
  assert [e[:2] for e in entries] == [('a.png', manifest.PREVIOUS),
                                      ('b.png', manifest.PREVIOUS)]
  schema = manifest.ENTRY_SCHEMAS[output_format]
  if output_format == 'jsonl':  # the line is carried as it was
    assert [json.loads(e[-1]) for e in entries] == [good, also_good]
  else:  # typed columns, the label as text
    typed = [dict(zip(schema.names, e)) for e in entries]
    assert [_seen(t) for t in typed] == _expect('parquet', good, also_good)
    assert typed[0]['label'] == '7' and typed[0]['class_key'] == '7'


_names = st.text(alphabet='ab/é_-', min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_names, st.integers(0, 3), st.sampled_from([None, 0, 7, 'cat']),
                          st.sampled_from([None, 'dog']),
                          st.sampled_from([None, 10, 2 ** 40]), st.booleans()),
                max_size=40),
       st.lists(st.integers(1, 9), min_size=1, max_size=8), st.integers(1, 2000),
       st.sampled_from(export_config.MANIFEST_FORMATS), st.booleans())
def test_entries_added_a_chunk_at_a_time_are_the_entries_added_one_by_one(
    tmp_path_factory, images, chunk_sizes, run_bytes, output_format, in_key_order):
  # The export adds each chunk's written rows with one `add_all`; the runs' rows, in
  # order, must be those `add` of each row gives, whatever the chunks and run sizes.
  rows = [dict(_row(path, index=index, label=label, size=size, passthrough=passthrough),
               label_name=label_name)
          for path, index, label, label_name, size, passthrough in images]
  if output_format == 'parquet':  # as manifest_row makes them: labels and ids as text
    rows = [manifest._with_text_fields(row) for row in rows]
  if in_key_order:
    rows = [dict(sorted(row.items())) for row in rows]

  def written(add):
    root = root_files.OutputRoot(str(tmp_path_factory.mktemp('root')))
    writer = manifest.EntryWriter(root, output_format, run_bytes=run_bytes)
    add(writer)
    return [row for run in writer.flush() for row in sorted_runs.rows_of(root, run)]

  def by_chunks(writer):
    start, sizes = 0, itertools.cycle(chunk_sizes)
    while start < len(rows):
      size = next(sizes)
      writer.add_all(manifest.WRITTEN, rows[start:start + size], in_key_order=in_key_order)
      start += size

  one_by_one = written(lambda writer: [
      writer.add(manifest.WRITTEN, row, in_key_order=in_key_order) for row in rows])
  # The same rows; the runs may be cut elsewhere (at a chunk's end), so in any order.
  assert sorted(written(by_chunks), key=repr) == sorted(one_by_one, key=repr)
  assert len(one_by_one) == len(rows)
  with pytest.raises(TypeError, match='not text'):
    written(lambda writer: writer.add_all(manifest.WRITTEN, [_row(b'x')]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(_names, st.integers(0, 3)), min_size=0, max_size=60),
       st.integers(1, 400), st.integers(1, 25), st.sampled_from(export_config.MANIFEST_FORMATS))
def test_any_runs_cut_into_any_parts_give_one_sorted_manifest(
    tmp_path_factory, images, run_bytes, part_rows, output_format):
  """Rows per path from sorted runs, cut into parts by path range, equal the in-memory
  answer, whatever the run sizes and part sizes: every path in exactly one part (a name
  at a boundary included, duplicates across runs included), parts in path order."""
  out = tmp_path_factory.mktemp('root')
  root = root_files.OutputRoot(str(out))
  writer = manifest.EntryWriter(root, output_format, rows_per_part=part_rows,
                                run_bytes=run_bytes)
  expected = {}
  for path, index in images:
    row = _row(path, index=index)
    writer.add(manifest.WRITTEN, row)
    expected.setdefault(path, {})[index] = row
  written = writer.flush()
  config = _config(out, manifest_format=output_format, manifest_part_rows=part_rows)
  parts = manifest.plan_parts(written, part_rows)
  assert [p.index for p in parts] == list(range(len(parts)))
  assert all(p.count == len(parts) for p in parts)
  bounds = [p.lo for p in parts[1:]]
  assert bounds == sorted(set(bounds))  # strictly increasing: disjoint, ordered ranges
  collided = []
  summaries = [manifest.write_part(p, written, config, collided.append) for p in parts]
  manifest.commit(summaries, config)
  rows = [{k: r[k] for k in ('path', 'index')} for r in outputs.manifest_rows(out)]
  unique = {p: r for p, by_index in expected.items() if len(by_index) == 1
            for r in by_index.values()}
  assert rows == [{'path': p, 'index': unique[p]['index']} for p in sorted(unique)]
  for part, summary in zip(parts, summaries):  # each part's rows lie in its range
    for key in ('first', 'last'):
      if summary[key] is not None:
        assert (part.lo is None or summary[key] >= part.lo) and (
            part.hi is None or summary[key] < part.hi)
  assert sorted({f.index for f in collided} | set()) == sorted(
      {i for p, by_index in expected.items() if len(by_index) > 1 for i in by_index})
  if images and part_rows * 2 < len(images) and len({p for p, _ in images}) > 2 * part_rows:
    assert len(parts) > 1


def _staged(root, summary):
  """A staged part's rows, and its Parquet row groups' sizes (None for JSONL)."""
  path = root.path(f'{manifest.STAGED}/{summary["name"]}')
  if summary['name'].endswith('.jsonl'):
    with open(path, 'rb') as f:
      return f.read(), None
  stored = pq.ParquetFile(path)
  return (stored.read().to_pylist(),
          [stored.metadata.row_group(i).num_rows for i in range(stored.num_row_groups)])


def _chosen(buckets, per_class=manifest.SAMPLES_PER_CLASS, limit=manifest.MAX_SAMPLES):
  sampler = manifest.RowSampler(per_class, limit)
  for label, rows in buckets:
    for row in rows:
      sampler.add(label, row)
  return sampler.chosen()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_names, st.integers(0, 2), st.sampled_from('wwwsp'),
                          st.sampled_from([None, 'a', 'b', 'c'])), min_size=10,
                max_size=120),
       st.integers(1, 400), st.integers(1, 6), st.integers(1, 4), st.integers(1, 60),
       st.integers(1, 12), st.integers(1, 5), st.booleans(),
       st.sampled_from(export_config.MANIFEST_FORMATS))
def test_a_part_written_slice_by_slice_is_the_part_written_whole(
    tmp_path_factory, images, run_bytes, group_rows, block_rows, part_rows, slice_rows,
    row_group_rows, overwrite, output_format):
  """Slices of any size, over runs of any groups and record batches, stage the same
  part as one slice does: the same bytes (JSONL) or rows in row groups of
  ROW_GROUP_ROWS (Parquet), the same counts, collisions and report samples, whatever
  the entries (replays, collisions, skipped images, previous rows kept or stale)."""
  out = tmp_path_factory.mktemp('root')
  root = root_files.OutputRoot(str(out))
  writer = manifest.EntryWriter(root, output_format, rows_per_part=group_rows * 16,
                                run_bytes=run_bytes, block_rows=block_rows)
  for path, index, kind, label in images:
    writer.add(kind, _row(f'i{path}.png', index=index, label=label, sha=f'{path}{index}'))
  written = writer.flush()
  assert all(run.block_rows == block_rows for run in written)
  config = _config(out, manifest_format=output_format, overwrite=overwrite)

  def staged(part, rows):
    collided = []
    summary = manifest.write_part(part, written, config, collided.append, slice_rows=rows)
    samples = _chosen(summary.pop('samples'))
    return summary, samples, [f.to_row() for f in collided], _staged(root, summary)

  with mock.patch.object(manifest, 'ROW_GROUP_ROWS', row_group_rows):
    one_part = staged(manifest.Part(0, 1, None, None), 10**9)[3][0]
    rows = b'' if output_format == 'jsonl' else []
    for part in manifest.plan_parts(written, part_rows):
      whole = staged(part, 10**9)
      sliced = staged(part, slice_rows)
      assert sliced == whole
      rows += sliced[3][0]
      groups = sliced[3][1]
      if groups is not None:  # full row groups but the last, one empty group if no row
        assert groups[:-1] == [row_group_rows] * (len(groups) - 1)
        assert 0 < groups[-1] <= row_group_rows or groups == [0]
    assert rows == one_part  # the parts' ranges hold every row once, in order


def test_parquet_parts_keep_dictionaries_only_for_columns_images_share(tmp_path):
  root = root_files.OutputRoot(str(tmp_path))
  writer = manifest.EntryWriter(root, 'parquet')
  for i in range(50):
    writer.add(manifest.WRITTEN, _row(f'{i:02d}.png', index=i, label=str(i % 3),
                                      sha=f'{i:064x}'))
  config = _config(tmp_path, manifest_format='parquet')
  summary = manifest.write_part(manifest.Part(0, 1, None, None), writer.flush(), config,
                                print)
  stored = pq.ParquetFile(root.path(f'{manifest.STAGED}/{summary["name"]}'))
  group = stored.metadata.row_group(0)
  dictionary = {group.column(i).path_in_schema: group.column(i).has_dictionary_page
                for i in range(group.num_columns)}
  assert not any(dictionary[name] for name in ('path', 'sha256', 'id', 'index', 'offset'))
  assert dictionary['source'] and dictionary['label'] and dictionary['format']
  assert stored.read().column('sha256').to_pylist() == [f'{i:064x}' for i in range(50)]


def test_a_committed_manifest_replaces_earlier_parts_and_a_killed_commit_is_finished(
    tmp_path):
  root = root_files.OutputRoot(str(tmp_path))
  for name in ('part-00000-of-00002.jsonl', 'part-00001-of-00002.jsonl'):
    root.write(f'_manifest/{name}', b'{"path": "old.png"}\n')
  root.write('_manifest.jsonl', b'{"path": "older.png"}\n')
  new = 'part-00000-of-00001.jsonl'
  root.write(f'{manifest.STAGED}/{new}', b'{"path": "new.png"}\n')
  root.write(manifest.JOURNAL, json.dumps(
      {'format': 'jsonl', 'rows': 1,
       'parts': [{'name': new, 'rows': 1, 'first': 'new.png', 'last': 'new.png'}]}).encode())
  manifest.recover(root)  # as the next run does, after a kill before the moves
  assert sorted(os.listdir(tmp_path / '_manifest')) == ['_parts.json', new]
  assert not os.path.exists(tmp_path / '_manifest.jsonl')
  assert [r['path'] for r in manifest.read_rows(root)] == ['new.png']
  root.write(f'{manifest.STAGED}/part-00000-of-00009.jsonl', b'{}\n')  # never committed
  manifest.recover(root)
  assert sorted(os.listdir(tmp_path / '_manifest')) == ['_parts.json', new]


def test_row_sampler_keeps_the_first_rows_of_the_first_classes_only():
  sampler = manifest.RowSampler(per_class=2, limit=3)
  for i, label in enumerate('aabacdde'):
    sampler.add(label, i)
  # classes a, b, c in order of first appearance; d and e come too late to be shown
  assert sampler.chosen() == [0, 2, 4]
  few = manifest.RowSampler(per_class=2, limit=5)
  for i, label in enumerate('aaab'):
    few.add(label, i)
  assert few.chosen() == [0, 3, 1]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from('abcdef'), max_size=40), st.integers(0, 40),
       st.integers(1, 3), st.integers(1, 4))
def test_samplers_of_consecutive_ranges_combine_into_the_whole_ones(labels, cut, per_class,
                                                                   limit):
  whole, left, right = (manifest.RowSampler(per_class, limit) for _ in range(3))
  for i, label in enumerate(labels):
    whole.add(label, i)
    (left if i < cut else right).add(label, i)
  combined = manifest.RowSampler(per_class, limit)
  for part in (left, right):
    for label, rows in part.buckets():
      for row in rows:
        combined.add(label, row)
  assert combined.chosen() == whole.chosen()


_no_surrogate = st.characters(blacklist_categories=('Cs',))
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) |
    st.floats(allow_nan=False, allow_infinity=False) | st.text(_no_surrogate),
    lambda inner: st.lists(inner, max_size=3) |
    st.dictionaries(st.text(_no_surrogate), inner, max_size=3),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(_no_surrogate), _json_values, max_size=8))
def test_manifest_lines_are_json_with_sorted_keys(row):
  line = manifest.manifest_line(row)
  assert line.endswith(b'\n') and line.count(b'\n') == 1
  assert json.loads(line) == row
  assert list(json.loads(line)) == sorted(row)


# Paths never hold NUL, nor lone surrogates (non-UTF-8 file names are refused at launch).
_no_nul = st.characters(blacklist_characters='\0', blacklist_categories=('Cs',))
_labels = st.none() | st.integers(-3, 2**63 - 1) | st.floats() | st.text(max_size=8)


@settings(max_examples=200, deadline=None)
@given(label=_labels, id_=_labels, names=st.none() | st.lists(st.text(max_size=4), max_size=3),
       name=st.text(_no_nul, min_size=1, max_size=12), source=st.text(_no_nul, max_size=12),
       value_range=st.none() | st.tuples(st.integers(-2**63, 2**64 - 1), st.integers(-2**63, 2**64 - 1)) |
       st.tuples(st.floats(), st.floats()),
       steps=st.lists(st.sampled_from(['chw_to_hwc', 'range_0_1_to_8bit']), max_size=2))
def test_a_written_image_row_is_built_in_key_order_and_written_as_json_dumps(
    label, id_, names, name, source, value_range, steps):
  # The export writes these rows with `in_key_order=True`, which does not sort keys.
  config = export_config.ExportConfig(
      patterns=('x',), output='/out', render=render.RenderConfig(
          id_key='id', label_key='label', label_names=tuple(names) if names else None))
  features = {k: v for k, v in (('label', label), ('id', id_)) if v is not None}
  image = decode.DecodedImage(
      ref=tfrecord.RecordRef(source, 7, 1234), n=0, pixels=np.zeros((4, 3, 1), np.uint8),
      axes='hwc', source_dtype='uint8', encoding='raw', key='image', features=features)
  rendered = render.Rendered(b'\x89PNG', (4, 3), 'uint8', tuple(steps), 'opencv', False,
                             value_range)
  row = manifest.manifest_row(image, name, rendered, config)
  assert list(row) == sorted(row)
  assert manifest.manifest_line(row, in_key_order=True) == manifest.manifest_line(row)
  # JSON has no NaN or infinity: the line holds null where the row holds one.
  assert json.loads(manifest.manifest_line(row)) == _finite_or_none(row)


def _finite_or_none(value):
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _finite_or_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite_or_none(v) for v in value]
  return value


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from('abcdefgh'), st.booleans(),
                          st.one_of(st.none(), st.sampled_from('xyz'))), max_size=80),
       st.integers(1, 4), st.integers(1, 5), st.floats(0, 1))
def test_a_parts_samples_are_what_the_sampler_takes_from_every_row_in_order(
    rows, per_class, limit, share):
  """`_samples` feeds the sampler only the rows it would take, also a sampler fed the
  slices before; fed every sampled row in path order instead (a row shown as another
  entry's class and line where decide says so), the sampler holds the same."""
  expected = manifest.RowSampler(per_class, limit)
  got = manifest.RowSampler(per_class, limit)
  cut = int(len(rows) * share)
  for start, piece in ((0, rows[:cut]), (cut, rows[cut:])):  # two slices, in order
    table = _table([(manifest.WRITTEN, _row(f'{start + i:03d}.png', index=i, label=c))
                    for i, (c, _, _) in enumerate(piece)], 'jsonl')
    sampled = np.array([s for _, s, _ in piece], dtype=bool)
    sampled_as = {i: (shown, _line(_row('other.png', label=shown)))
                  for i, (_, s, shown) in enumerate(piece) if s and shown is not None}
    lines = table.column('line').to_pylist()
    classes = table.column('class_key').to_pylist()
    for i in np.flatnonzero(sampled):
      class_key, line = sampled_as.get(i, (classes[i], lines[i]))
      expected.add(class_key, line.decode('utf-8'))
    buckets = manifest._samples(  # pylint: disable=protected-access
        table, np.arange(table.num_rows), sampled, sampled_as, got)
    assert buckets == expected.buckets()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.text(max_size=5), max_size=6), min_size=1, max_size=6),
       st.data())
def test_taking_rows_from_chunks_equals_arrows_take(chunks, data):
  """`_take` (which cuts each chunk to the rows it needs first) gives what Arrow's
  take gives, for any chunking and any indices: repeated, unordered, none."""
  column = pa.chunked_array([pa.array(c, pa.string()) for c in chunks], type=pa.string())
  n = len(column)
  indices = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=20)) if n else [],
                     dtype=np.int64)
  got = manifest._take(column, indices)  # pylint: disable=protected-access
  assert got.to_pylist() == column.take(indices).to_pylist()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from('abcdefgh'), max_size=12), max_size=8),
       st.integers(1, 3), st.integers(1, 5), st.randoms(use_true_random=False))
def test_sample_merge_in_any_order_chooses_what_one_sampler_in_order_does(
    parts, per_class, limit, random):
  """commit's bounded merge of the parts' samples, taken in the order the runner hands
  them over, against one RowSampler fed every row in path order."""
  whole = manifest.RowSampler(per_class, limit)
  summaries = []
  for p, labels in enumerate(parts):
    sampler = manifest.RowSampler(per_class, limit)
    for i, label in enumerate(labels):
      whole.add(label, (p, i))
      sampler.add(label, (p, i))
    summaries.append((manifest.part_name(p, len(parts), 'jsonl'), sampler.buckets()))
  random.shuffle(summaries)
  merged = manifest.SampleMerge(per_class, limit)
  for name, buckets in summaries:
    merged.add_part(name, buckets)
    assert len(merged._by_class) <= limit  # pylint: disable=protected-access
    assert all(len(kept) <= per_class for kept in merged._by_class.values())  # pylint: disable=protected-access
  assert merged.chosen() == whole.chosen()
