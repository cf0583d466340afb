"""The manifest's sorted runs and their merge (transforms/manifest.py), without Beam."""

import hashlib
import io
import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms import decode
from transforms import export
from transforms import manifest
from transforms import output_root
from transforms import render
from transforms import tfrecord


def _row(path, source='s.tfrecord', index=0, n=0, size=10, label=None, sha='x',
         passthrough=False):
  return {'path': path, 'source': source, 'index': index, 'n': n, 'bytes': size,
          'label': label, 'label_name': None, 'sha256': sha, 'passthrough': passthrough}


def _line(row):
  return json.dumps(row, sort_keys=True, ensure_ascii=False) + '\n'


def _entry(kind, row):
  return manifest.entry(kind, row, _line(row))


def _merge(entries, keep_previous=lambda row: False, on_disk=None):
  out, seen = io.BytesIO(), []
  result = manifest.merge_runs(
      sorted(entries), out, keep_previous=keep_previous,
      on_disk_sha256=lambda path: (on_disk or {}).get(path),
      sample=lambda key, line: seen.append((json.loads(key), json.loads(line)['path'])))
  return [json.loads(line) for line in out.getvalue().splitlines()], result, seen


def test_runs_are_sorted_files_and_merge_back_in_path_order(tmp_path):
  root = output_root.OutputRoot(str(tmp_path))
  writer = manifest.RunWriter(root, run_bytes=2_000)
  paths = [f'{c}/img-{i:04d}.png' for i in range(300, 0, -1) for c in 'ba']
  for path in paths:
    writer.add(_entry(manifest.WRITTEN, _row(path)))
  runs = writer.flush()
  assert len(runs) > 10  # small runs, so the merge below needs intermediate levels
  for run, count in runs:
    lines = open(os.path.join(tmp_path, run), 'rb').read().splitlines(keepends=True)
    assert lines == sorted(lines) and len(lines) == count
  merged = [manifest.path_of(raw).decode() for raw in manifest.merged(root, runs, fan_in=3)]
  assert merged == sorted(paths)
  assert writer.flush() == []  # flush hands the runs over once


def test_a_run_read_back_short_fails_loudly(tmp_path):
  root = output_root.OutputRoot(str(tmp_path))
  writer = manifest.RunWriter(root)
  for path in ('a.png', 'b.png'):
    writer.add(_entry(manifest.WRITTEN, _row(path)))
  [(name, count)] = writer.flush()
  with pytest.raises(OSError, match='read back 2 entries of 3'):
    list(manifest.merged(root, [(name, count + 1)]))


def test_one_image_per_path_is_written_with_totals_and_samples():
  rows, result, seen = _merge([
      _entry(manifest.WRITTEN, _row('b.png', index=1, size=7, label=3)),
      _entry(manifest.WRITTEN, _row('a.png', index=0, size=5, passthrough=True)),
  ])
  assert [r['path'] for r in rows] == ['a.png', 'b.png']
  assert (result.written, result.bytes, result.passthrough) == (2, 12, 1)
  assert seen == [('', 'a.png'), ('3', 'b.png')]


def test_a_replayed_image_gives_one_row_and_different_images_one_name_collide():
  replay = _row('same.png', index=4)
  first, second = _row('two.png', index=1, sha='aa'), _row('two.png', index=2, sha='bb')
  rows, result, _ = _merge(
      [_entry(manifest.WRITTEN, replay), _entry(manifest.WRITTEN, replay),
       _entry(manifest.WRITTEN, first), _entry(manifest.WRITTEN, second)],
      on_disk={'two.png': 'bb'})
  assert rows == [replay, second]  # the row of the file that is on disk stays
  assert result.written == 2
  [collision] = result.collisions
  assert (collision.path, collision.kept, collision.others) == ('two.png', second, [first])


def test_an_image_skipped_for_a_file_another_image_of_the_run_wrote_collides():
  first = _row('two.png', index=1, sha='aa')
  skipped_second = _row('two.png', index=2, sha='aa')  # its row is made from that file
  replay = _row('one.png', index=3, sha='cc')  # a retried bundle skips its own file
  rows, result, _ = _merge(
      [_entry(manifest.WRITTEN, first), _entry(manifest.SKIPPED, skipped_second),
       _entry(manifest.WRITTEN, replay), _entry(manifest.SKIPPED, replay)],
      on_disk={'two.png': 'aa', 'one.png': 'cc'})
  assert rows == [replay, first] and (result.written, result.skipped) == (2, 0)
  [collision] = result.collisions
  assert (collision.path, collision.kept, collision.others, collision.skipped) == (
      'two.png', first, [skipped_second], 1)


def test_a_collision_whose_file_matches_no_row_keeps_none():
  rows, result, _ = _merge(
      [_entry(manifest.WRITTEN, _row('x.png', index=1, sha='aa')),
       _entry(manifest.WRITTEN, _row('x.png', index=2, sha='bb'))],
      on_disk={'x.png': hashlib.sha256(b'other').hexdigest()})
  assert rows == [] and result.written == 0
  assert result.collisions[0].kept is None and len(result.collisions[0].others) == 2


def test_skipped_images_keep_the_previous_row_and_previous_rows_stay_or_go():
  old = _row('kept.png', source='old', sha='from-last-run')
  skipped_new = _row('kept.png', source='old', sha='from-file')
  lonely_skip = _row('killed-run.png', sha='from-file')
  unchanged = _row('other-shard.png', source='unchanged')
  gone = _row('stale.png', source='changed')
  entries = [_entry(manifest.PREVIOUS, old), _entry(manifest.SKIPPED, skipped_new),
             _entry(manifest.SKIPPED, lonely_skip), _entry(manifest.PREVIOUS, unchanged),
             _entry(manifest.PREVIOUS, gone)]
  rows, result, seen = _merge(entries, keep_previous=lambda r: r['source'] != 'changed')
  assert rows == [old, lonely_skip, unchanged]
  assert (result.skipped, result.kept_from_previous, result.stale) == (2, 1, ['stale.png'])
  assert [path for _, path in seen] == ['kept.png', 'killed-run.png']


def test_previous_manifest_lines_become_entries_and_bad_lines_are_dropped():
  good = _row('a.png')
  lines = [_line(good).encode(), b'not json\n', b'{"no": "path"}\n']
  [raw] = manifest.previous_entries(lines)
  parsed = manifest.Entry.parse(raw)
  assert (parsed.path, parsed.kind, parsed.row()) == ('a.png', manifest.PREVIOUS, good)


_names = st.text(alphabet='ab/é_-', min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_names, st.integers(0, 3)), min_size=0, max_size=60),
       st.integers(1, 400))
def test_merging_any_split_into_runs_matches_a_plain_dict(tmp_path_factory, images, run_bytes):
  """Rows per path from sorted runs equal the in-memory answer, whatever the run sizes."""
  root = output_root.OutputRoot(str(tmp_path_factory.mktemp('runs')))
  writer = manifest.RunWriter(root, run_bytes=run_bytes)
  expected = {}
  for path, index in images:
    row = _row(path, index=index)
    writer.add(_entry(manifest.WRITTEN, row))
    expected.setdefault(path, {})[index] = row
  out = io.BytesIO()
  result = manifest.merge_runs(
      manifest.merged(root, writer.flush(), fan_in=2), out,
      keep_previous=lambda row: False, on_disk_sha256=lambda path: None,
      sample=lambda key, line: None)
  rows = [json.loads(line) for line in out.getvalue().splitlines()]
  unique = {p: r for p, by_index in expected.items() if len(by_index) == 1
            for r in by_index.values()}
  assert rows == [unique[p] for p in sorted(unique)]
  assert sorted(c.path for c in result.collisions) == sorted(
      p for p, by_index in expected.items() if len(by_index) > 1)


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


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(), _json_values, max_size=8))
def test_manifest_lines_are_json_dumps_with_sorted_keys(row):
  assert manifest.manifest_line(row) == json.dumps(row, sort_keys=True,
                                                 ensure_ascii=False) + '\n'


# Paths never hold NUL, nor lone surrogates (non-UTF-8 file names are refused at launch).
_no_nul = st.characters(blacklist_characters='\0', blacklist_categories=('Cs',))
_labels = st.none() | st.integers(-3, 2**63 - 1) | st.floats() | st.text(max_size=8)


@settings(max_examples=200, deadline=None)
@given(label=_labels, id_=_labels, names=st.none() | st.lists(st.text(max_size=4), max_size=3),
       name=st.text(_no_nul, min_size=1, max_size=12), source=st.text(_no_nul, max_size=12),
       value_range=st.none() | st.tuples(st.integers(), st.integers()) |
       st.tuples(st.floats(), st.floats()),
       steps=st.lists(st.sampled_from(['chw_to_hwc', 'range_0_1_to_8bit']), max_size=2))
def test_a_written_image_row_is_built_in_key_order_and_written_as_json_dumps(
    label, id_, names, name, source, value_range, steps):
  # The export writes these rows with `in_key_order=True`, which does not sort keys.
  config = export.ExportConfig(
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
  assert manifest.manifest_line(row, in_key_order=True) == json.dumps(
      row, sort_keys=True, ensure_ascii=False) + '\n'
  # The entry's class: the label as JSON text, ASCII-escaped as json.dumps gives it.
  label = row['label_name'] or row['label']
  class_key = manifest.Entry.parse(
      manifest.entry(manifest.WRITTEN, row, manifest.manifest_line(row))).class_key
  assert class_key == json.dumps('' if label is None else str(label)).encode()
