"""What the inputs are (issue 43, items 6 and 7), through the real command on
TensorFlow-written records of real photographs: an input that would read the output's
own files is refused at launch; files that are no TFRecord are named as such, one failure
each when named outright, skipped with one warning line in a folder input."""

import gzip
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests import fixtures
from tests import outputs
from tests.conftest import REPO
from tests.test_export_job import OFFLINE, _read_rgb


def _shard(path, first, count):
  """A TF-written shard of `count` photos (ids p<first>...), returns {id: pixels}."""
  photos = {f'p{i}': fixtures.photo(i % 7, 24 + i % 3, 20) for i in range(first,
                                                                          first + count)}
  fixtures.write_tfrecord(str(path), [fixtures.example({
      'image': fixtures.bytes_feature(fixtures.serialized_tensor(pixels)),
      'id': fixtures.bytes_feature(name.encode())}) for name, pixels in photos.items()])
  return photos


ARGS = ['--image_key', 'image', '--id_key', 'id', '--name_template', '{id}.{ext}']


def _one_line(result):
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr[-3000:]
  return lines[0]


def _images(root):
  return sorted(n for n in os.listdir(root) if n.endswith('.png')) if os.path.isdir(
      root) else []


# -- 6. an input pattern that matches the output's own files ----------------------------

def test_an_input_that_matches_the_output_is_refused_at_launch(unrecord, tmp_path):
  data = tmp_path / 'data'
  photos = _shard(data / 'train.tfrecord', 0, 4)
  out = data / 'out'
  pattern = f'{data}/**'
  # Run twice, as the issue did: refused both times, before anything is written.
  for _ in range(2):
    result = unrecord('export', '--input', pattern, '--output', str(out), *ARGS,
                      env=OFFLINE)
    assert result.returncode == 2, result.stderr[-3000:]
    line = _one_line(result)
    assert f'--input {pattern!r}' in line and f'--output {str(out)!r}' in line, line
    assert 'read its own output' in line
    assert _images(out) == []
  # An output an earlier export filled (a pattern that left it out), then a pattern that
  # takes it in: refused, naming one of the files it would read back.
  written = unrecord('export', '--input', f'{data}/*.tfrecord', '--output', str(out),
                     *ARGS, env=OFFLINE)
  assert written.returncode == 0, written.stderr[-3000:]
  assert _images(out) == sorted(f'{name}.png' for name in photos)
  for name, pixels in photos.items():
    assert np.array_equal(_read_rgb(str(out / f'{name}.png')), pixels)
  before = sorted(os.listdir(out))
  result = unrecord('export', '--input', pattern, '--output', str(out), '--skip_existing',
                    *ARGS, env=OFFLINE)
  assert result.returncode == 2, result.stderr[-3000:]
  line = _one_line(result)
  assert f'--input {pattern!r}' in line and str(out) in line, line
  assert sorted(os.listdir(out)) == before
  assert not [r for r in outputs.manifest_rows(str(out)) if r['path'].startswith('_')]


def test_an_output_inside_a_folder_input_is_refused_however_it_is_spelled(unrecord,
                                                                          tmp_path):
  data = tmp_path / 'data'
  _shard(data / 'part-0.tfrecord', 0, 2)
  link = tmp_path / 'link'
  os.symlink(str(data / 'exports'), str(link))
  relative = os.path.relpath(str(data / 'nested' / '..' / 'exports'), REPO)
  for output in (str(data / 'exports' / 'run1'), relative, str(link)):
    result = unrecord('export', '--input', str(data), '--output', output, *ARGS,
                      env=OFFLINE)
    assert result.returncode == 2, (output, result.stderr[-3000:])
    line = _one_line(result)
    assert f'--input {str(data)!r}' in line and f'--output {output!r}' in line, line
    assert 'inside that input folder' in line
    assert not (data / 'exports').exists()
  # A folder input does not read folders named '_*' or '.*': an output there is fine.
  hidden = data / '_exports'
  result = unrecord('export', '--input', str(data), '--output', str(hidden), *ARGS,
                    env=OFFLINE)
  assert result.returncode == 0, result.stderr[-3000:]
  assert _images(hidden) == ['p0.png', 'p1.png']


# -- 7. files that are not TFRecords ------------------------------------------------------

@pytest.fixture
def mixed_folder(tmp_path):
  """TF-slim shard names, one '.tfrecord' name, an empty shard, and what else such
  folders hold: a README, a JSON file and a tf.data snapshot's own metadata files."""
  folder = tmp_path / 'mixed'
  photos = {}
  photos.update(_shard(folder / 'train-00000-of-00002', 0, 3))
  photos.update(_shard(folder / 'train-00001-of-00002', 3, 3))
  photos.update(_shard(folder / 'x.tfrecord', 6, 2))
  (folder / 'empty.tfrecord').write_bytes(b'')  # a valid TFRecord file of no records
  (folder / 'README').write_text('Training shards, written by build_data.py.\n' * 20)
  (folder / 'info.json').write_text(json.dumps({'splits': {'train': 8}, 'classes': 3}))
  snapshot = tmp_path / 'snapshot'
  tf.data.Dataset.range(5).save(str(snapshot))
  for name in ('snapshot.metadata', 'dataset_spec.pb'):
    (folder / name).write_bytes((snapshot / name).read_bytes())
  skipped = ['README', 'dataset_spec.pb', 'info.json', 'snapshot.metadata']
  return folder, photos, skipped


def test_a_folder_input_reads_the_tfrecords_by_content_and_skips_the_rest(
    unrecord, mixed_folder, tmp_path):
  folder, photos, skipped = mixed_folder
  out = tmp_path / 'out'
  result = unrecord('export', '--input', str(folder), '--output', str(out), *ARGS,
                    env=OFFLINE)
  assert result.returncode == 0, result.stderr[-3000:]
  # Every shard, the TF-slim names too, with the right pixels; nothing failed.
  assert _images(out) == sorted(f'{name}.png' for name in photos)
  for name, pixels in photos.items():
    assert np.array_equal(_read_rgb(str(out / f'{name}.png')), pixels), name
  assert (out / '_SUCCESS').exists()
  assert (out / '_dead_letter.jsonl').read_text() == ''
  warnings = [l for l in result.stderr.splitlines() if 'warning' in l]
  assert len(warnings) == 1, result.stderr[-3000:]
  assert warnings[0] == (
      f'unrecord export: warning: skipped 4 file(s) in {folder} that are not TFRecord '
      f'files: {", ".join(skipped)}')
  report = json.loads((out / '_report.json').read_text())
  assert report['skipped_inputs'] == [str(folder / name) for name in skipped]
  assert report['written'] == len(photos) and report['failed'] == 0

  # inspect reads the same files, and says the same.
  seen = unrecord('inspect', '--input', str(folder), '--json', env=OFFLINE)
  assert seen.returncode == 0, seen.stderr[-3000:]
  assert seen.stderr.strip().splitlines() == [
      warnings[0].replace('unrecord export', 'unrecord inspect')]
  found = json.loads(seen.stdout)
  assert found['skipped_inputs'] == [str(folder / name) for name in skipped]
  assert found['records_sampled'] == len(photos) and not found['failures']


def test_files_that_are_no_tfrecord_named_outright_are_one_failure_each(unrecord,
                                                                        mixed_folder,
                                                                        tmp_path):
  folder, photos, _ = mixed_folder
  png = tmp_path / 'photo.png'
  png.write_bytes(fixtures.encode_png(fixtures.photo(0, 256, 256)))  # ~100 KB
  fake_gzip = tmp_path / 'notes.json.gz'  # named gzip, but plain JSON
  fake_gzip.write_text(json.dumps({'notes': 'x' * 3000}))
  text_gzip = tmp_path / 'log.tfrecord.gz'  # gzip, of text
  text_gzip.write_bytes(gzip.compress(b'epoch 1 loss 0.25\n' * 500))
  plain_gz = tmp_path / 'plain.tfrecord.gz'  # an uncompressed TFRecord named .gz
  photos.update(_shard(plain_gz, 10, 2))
  shard = str(folder / 'x.tfrecord')
  named = [str(folder / 'README'), str(folder / 'info.json'),
           str(folder / 'snapshot.metadata'), str(folder / 'dataset_spec.pb'), str(png),
           str(fake_gzip), str(text_gzip)]
  out = tmp_path / 'out'
  result = unrecord('export', '--input', ','.join([shard, str(plain_gz)] + named),
                    '--output', str(out), *ARGS, env=OFFLINE)
  assert result.returncode == 1, result.stderr[-3000:]
  rows = [json.loads(line) for line in open(out / '_dead_letter.jsonl')]
  assert sorted(r['source'] for r in rows) == sorted(named)  # one row each, no flood
  for row in rows:
    assert (row['reason'], row['index'], row['offset'], row['stage']) == (
        'not_tfrecord', 0, 0, 'read'), row
  by_name = {os.path.basename(r['source']): r['message'] for r in rows}
  assert by_name['README'].startswith('not a TFRecord file') and '(it looks like text)' in \
      by_name['README']
  assert 'JSON text' in by_name['info.json']
  assert 'a PNG image' in by_name['photo.png']
  assert 'binary data' in by_name['snapshot.metadata']
  assert 'it is 7 bytes long' in by_name['dataset_spec.pb']
  assert by_name['notes.json.gz'].startswith('not gzip data')
  assert 'JSON text' in by_name['notes.json.gz']
  assert by_name['log.tfrecord.gz'].startswith('not a TFRecord file once gzip decompressed')
  assert "failed 7 (not_tfrecord: 7)" in result.stderr
  # The good records beside them are all written, the .gz-named plain shard too.
  expected = {n: p for n, p in photos.items() if n in ('p6', 'p7', 'p10', 'p11')}
  assert _images(out) == sorted(f'{name}.png' for name in expected)
  for name, pixels in expected.items():
    assert np.array_equal(_read_rgb(str(out / f'{name}.png')), pixels), name

  allowed = unrecord('export', '--input', ','.join([shard] + named), '--output',
                     str(tmp_path / 'allowed'), '--max_failures', '7', *ARGS, env=OFFLINE)
  assert allowed.returncode == 0, allowed.stderr[-3000:]
  assert (tmp_path / 'allowed' / '_SUCCESS').exists()
