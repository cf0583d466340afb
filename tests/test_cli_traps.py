"""The command line as new users meet it: every trap issue 21 found, through the real
command on TensorFlow-written records of real photographs."""

import json
import os

import cv2
import numpy as np

from tests import fixtures
from tests.test_export_job import METADATA, OFFLINE, _export, _files, _manifest, _read_rgb


def _one_line_error(result, *expected):
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  for text in expected:
    assert text in lines[0], lines[0]
  return lines[0]


def _tensor_photos(path, count=3, **features):
  photos = [fixtures.photo(i, 24, 20) for i in range(count)]
  fixtures.write_tfrecord(path, [fixtures.example(dict(
      {'image': fixtures.bytes_feature(fixtures.serialized_tensor(p))},
      **{k: v(i) for k, v in features.items()})) for i, p in enumerate(photos)])
  return photos


def test_choice_values_take_any_case_and_aliases_and_errors_are_one_line(unrecord,
                                                                          tmp_path):
  photos = [fixtures.photo(i, 24, 20) for i in range(3)]
  fixtures.write_tfrecord(str(tmp_path / 'in' / 'photos.tfrecord.gz'), [
      fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(p))})
      for p in photos], compression='GZIP')
  out = str(tmp_path / 'out')
  _export(unrecord, '--input', str(tmp_path / 'in'), '--output', out, '--format', 'JPG',
          '--compression', 'gz', '--channel_order', 'RGB')
  assert _files(out) - METADATA == {f'photos-{i:06d}.jpg' for i in range(3)}
  assert all(r['format'] == 'jpeg' for r in _manifest(out))
  tif = str(tmp_path / 'tif')
  _export(unrecord, '--input', str(tmp_path / 'in'), '--output', tif, '--format', 'tif')
  for i, photo in enumerate(photos):
    assert np.array_equal(_read_rgb(os.path.join(tif, f'photos-{i:06d}.tif')), photo)

  line = _one_line_error(
      unrecord('export', '--input', str(tmp_path / 'in'), '--output', str(tmp_path / 'x'),
               '--format', 'gif', env=OFFLINE), "--format: invalid choice 'gif'",
      'png, jpeg, webp, tiff, bmp')
  assert 'usage' not in line
  _one_line_error(
      unrecord('export', '--input', str(tmp_path / 'in'), '--output', str(tmp_path / 'x'),
               '--layout', 'clas', env=OFFLINE), 'did you mean class?')
  _one_line_error(
      unrecord('inspect', '--input', str(tmp_path / 'in'), '--compression', 'gzp',
               env=OFFLINE), 'did you mean gzip?')
  assert not os.path.exists(tmp_path / 'x')


def test_negative_value_ranges_are_values_not_options(unrecord, tmp_path):
  photos = [fixtures.photo(i, 24, 20) for i in range(2)]
  signed = [(p / 127.5 - 1.0).astype(np.float32) for p in photos]
  path = fixtures.write_tfrecord(str(tmp_path / 'signed.tfrecord'), [fixtures.example(
      {'image': fixtures.bytes_feature(fixtures.serialized_tensor(s))}) for s in signed])
  out = str(tmp_path / 'out')
  _export(unrecord, '--input', path, '--output', out, '--value_range', '-1,1')
  for i, s in enumerate(signed):
    expected = np.rint((s.astype(np.float64) + 1) / 2 * 255).astype(np.uint8)
    assert np.array_equal(_read_rgb(os.path.join(out, f'signed-{i:06d}.png')), expected)
  assert {tuple(r['value_range']) for r in _manifest(out)} == {(-1, 1)}


def test_unquoted_globs_are_taken_as_inputs_or_explained(unrecord, tmp_path):
  for name in ('a', 'b'):
    _tensor_photos(str(tmp_path / f'{name}.tfrecord'), count=2)
  out = str(tmp_path / 'out')
  # What the shell passes for --input *.tfrecord: every file after the option.
  _export(unrecord, '--input', str(tmp_path / 'a.tfrecord'), str(tmp_path / 'b.tfrecord'),
          '--output', out)
  assert _files(out) - METADATA == {f'{n}-{i:06d}.png' for n in 'ab' for i in range(2)}
  _one_line_error(
      unrecord('export', '--input', str(tmp_path / 'a.tfrecord'), 'gone.tfrecord',
               '--output', str(tmp_path / 'x'), env=OFFLINE),
      "unknown argument 'gone.tfrecord'", 'quote the pattern')


def test_names_always_end_in_the_formats_extension(unrecord, tmp_path):
  path = str(tmp_path / 'named.tfrecord')
  photos = _tensor_photos(path, filename=lambda i: fixtures.bytes_feature(b'x%d.jpg' % i),
                          label=lambda i: fixtures.int64_feature(i))
  out = str(tmp_path / 'out')
  _export(unrecord, '--input', path, '--output', out, '--name_template',
          '{filename}')
  assert _files(out) - METADATA == {f'x{i}.png' for i in range(3)}
  for i, photo in enumerate(photos):
    data = open(os.path.join(out, f'x{i}.png'), 'rb').read()
    assert data.startswith(b'\x89PNG')
    assert np.array_equal(_read_rgb(os.path.join(out, f'x{i}.png')), photo)
  bare = str(tmp_path / 'bare')
  _export(unrecord, '--input', path, '--output', bare, '--name_template', 'l{label}',
          '--format', 'webp', '--webp_lossless')
  assert _files(bare) - METADATA == {f'l{i}.webp' for i in range(3)}
  assert sorted(r['path'] for r in _manifest(bare)) == [f'l{i}.webp' for i in range(3)]
  for i, photo in enumerate(photos):
    assert np.array_equal(_read_rgb(os.path.join(bare, f'l{i}.webp')), photo)


def test_class_layout_without_labels_names_label_key(unrecord, tmp_path):
  path = str(tmp_path / 'unlabeled.tfrecord')
  _tensor_photos(path)
  line = _one_line_error(
      unrecord('export', '--input', path, '--output', str(tmp_path / 'x'), '--layout',
               'class', env=OFFLINE), '--label_key')
  assert '--name_template' not in line


def test_hints_point_the_right_way(unrecord, tmp_path):
  path = str(tmp_path / 'photos.tfrecord')
  _tensor_photos(path)
  _one_line_error(
      unrecord('export', '--input', path, '--output', str(tmp_path / 'x'), '--mean',
               'imagnet', env=OFFLINE), 'imagenet, imagenet_255', 'did you mean imagenet?')
  raw = str(tmp_path / 'raw.tfrecord')
  fixtures.write_tfrecord(raw, [fixtures.example({
      'image/raw': fixtures.bytes_feature(fixtures.photo(0, 40, 30).tobytes()),
      'height': fixtures.int64_feature(40), 'width': fixtures.int64_feature(30),
      'channels': fixtures.int64_feature(3)})])
  line = _one_line_error(
      unrecord('export', '--input', raw, '--output', str(tmp_path / 'x'), '--shape',
               '100x100', env=OFFLINE), '--shape [100, 100] disagrees', '[40, 30, 3]',
      'drop --shape')
  assert '--image_key' not in line
  _one_line_error(
      unrecord('export', '--input', path, '--output', str(tmp_path / 'x'), '--format',
               'jpeg', '--png_compression', '3', env=OFFLINE),
      '--png_compression (for png) does nothing with --format jpeg')


def test_version_quiet_and_the_closing_line_of_a_failed_run(unrecord, tmp_path):
  for args in (('--version',), ('export', '--version'), ('inspect', '--version')):
    result = unrecord(*args, env=OFFLINE, check=True)
    assert result.stdout.strip().startswith('unrecord 0.'), result.stdout
  path = str(tmp_path / 'photos.tfrecord')
  _tensor_photos(path)
  quiet = _export(unrecord, '--input', path, '--output', str(tmp_path / 'q'), '--quiet')
  assert quiet.stderr == '' and quiet.stdout == ''
  assert os.path.exists(tmp_path / 'q' / '_SUCCESS')

  broken = str(tmp_path / 'in' / 'broken.tfrecord')
  fixtures.write_tfrecord(broken, [
      fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(
          fixtures.photo(0, 24, 20)))}),
      fixtures.example({'image': fixtures.bytes_feature(b'\x89PNG\r\n\x1a\n broken')})])
  failed = _export(unrecord, '--input', broken, '--output', str(tmp_path / 'f'),
                   '--quiet', expect=1)
  last, = failed.stderr.strip().splitlines()
  assert 'failed 1' in last and 'exit 1: failures 1 > --max_failures 0' in last
  assert 'no _SUCCESS' in last
  rows = [json.loads(l) for l in open(tmp_path / 'f' / '_dead_letter.jsonl')]
  assert [(r['index'], r['source']) for r in rows] == [(1, broken)]


# -- issue 43, item 11: wording and small traps -----------------------------------------

def test_a_mistyped_option_is_named_once_with_the_option_meant(unrecord, tmp_path):
  path = str(tmp_path / 'photos.tfrecord')
  _tensor_photos(path)
  out = tmp_path / 'x'
  line = _one_line_error(
      unrecord('export', '--input', path, '--output', str(out), '--fromat', 'png',
               env=OFFLINE),
      "unknown argument '--fromat' (did you mean --format?)")
  # 'png' is --fromat's value, not a stray pattern: no quoting advice, no second message.
  assert line == ("unrecord export: error: unknown argument '--fromat' (did you mean "
                  "--format?)"), line
  # A stray value that is no file name gets no quoting advice either.
  line = _one_line_error(
      unrecord('export', '--input', path, '--output', str(out), '--webp_lossless', 'true',
               '--format', 'webp', env=OFFLINE), "unknown argument 'true'")
  assert 'quote' not in line
  assert not out.exists()


def test_an_output_that_is_a_file_says_so(unrecord, tmp_path):
  path = str(tmp_path / 'photos.tfrecord')
  _tensor_photos(path)
  existing = tmp_path / 'notes.txt'
  existing.write_text('keep me\n')
  line = _one_line_error(
      unrecord('export', '--input', path, '--output', str(existing), env=OFFLINE),
      f"--output {str(existing)!r} is a file, not a folder")
  assert 'Errno' not in line
  line = _one_line_error(
      unrecord('export', '--input', path, '--output', str(existing / 'out'), env=OFFLINE),
      f'which is a file, not a folder')
  assert 'Errno' not in line and str(existing) in line
  assert existing.read_text() == 'keep me\n'


def test_inspect_names_the_record_kind_in_words(unrecord, tmp_path):
  path = str(tmp_path / 'photos.tfrecord')
  _tensor_photos(path)
  result = unrecord('inspect', '--input', path, env=OFFLINE)
  assert result.returncode == 0, result.stderr[-3000:]
  first = result.stdout.splitlines()[0]
  assert first == 'Sampled 3 records, each a tf.train.Example', first
  tensors = str(tmp_path / 'tensors.tfrecord')
  fixtures.write_tfrecord(tensors, [fixtures.serialized_tensor(fixtures.photo(0, 24, 20))])
  result = unrecord('inspect', '--input', tensors, env=OFFLINE)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines()[0] == (
      'Sampled 1 record, a serialized tensor (tf.io.serialize_tensor)')


def test_each_help_fits_a_screen_per_group_and_ends_with_its_docs_pages(unrecord):
  """`--help` of every command: option groups of at most 50 lines in an 80-column
  terminal, no wider line, and its last lines name the docs pages that hold the rest."""
  from tests.conftest import REPO
  for command, pages in ((['export'], ['docs/export.md', 'docs/output.md',
                                       'docs/runners.md']),
                         (['inspect'], ['docs/reading.md']),
                         (['verify'], ['docs/output.md']),
                         ([], ['docs/README.md'])):
    result = unrecord(*command, '--help', env={'COLUMNS': '80'})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.rstrip('\n').splitlines()
    assert max(len(line) for line in lines) <= 80, command
    ending = ' '.join(lines[-3:])
    for page in pages:
      assert page in ending and os.path.exists(os.path.join(REPO, page)), (command, ending)
    # A group: its title line (unindented, ending in ':') down to the next title.
    titles = [i for i, line in enumerate(lines) if line.endswith(':') and line[:1].strip()
              and (i == 0 or not lines[i - 1].strip())]
    sizes = {lines[i]: end - i for i, end in zip(titles, titles[1:] + [len(lines)])}
    assert all(size <= 50 for size in sizes.values()), (command, sizes)
    if command == ['export']:
      assert list(sizes)[:6] == [
          'unrecord input:', 'unrecord output and format:', 'unrecord names:',
          'unrecord re-runs, manifest and success:', 'unrecord run and terminal:',
          'unrecord normalization:'], sizes
