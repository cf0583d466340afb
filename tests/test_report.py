"""_report.html and _report.json, and the errors a user meets first, as a user meets them."""

import base64
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from tests import fixtures
from transforms.output import report

CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
                  '--no-first-run', '--disable-background-networking',
                  '--disable-component-update', '--disable-sync']


def _embedded_images(page: str):
  return [Image.open(io.BytesIO(base64.b64decode(data))) for data in
          re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


@pytest.fixture(scope='module')
def report_run(tfds_dataset, tmp_path_factory):
  """A class-layout export of the TFDS dataset plus one bad record, with its report."""
  from tests.conftest import run_unrecord
  root = tmp_path_factory.mktemp('report')
  bad = fixtures.write_tfrecord(str(root / 'bad.tfrecord'), [
      fixtures.example({'label': fixtures.int64_feature(1)})])
  out = root / 'out'
  result = run_unrecord('export', '--input', tfds_dataset, '--input', bad, '--output',
                        str(out), '--layout', 'class', '--max_failures', '1')
  assert result.returncode == 0, result.stderr[-3000:]
  return out


def test_report_json_has_the_numbers(report_run):
  report = json.load(open(report_run / '_report.json'))
  assert (report['written'], report['failed'], report['success']) == (9, 1, True)
  assert report['failed_by_reason'] == {'missing_feature': 1}
  assert 'no feature looks like an image' in report['first_failures'][0] or \
      "image feature 'image' not found" in report['first_failures'][0]
  assert report['options']['layout'] == 'class' and report['images_per_second'] > 0
  work = report['work']  # a range per small file: the TFDS shards and the bad one
  assert work['ranges'] >= 2
  assert 0 < work['seconds'] and 0 <= work['startup_seconds']
  assert work['startup_seconds'] + work['seconds'] <= report['seconds'] + 0.01
  assert 0 < work['range_seconds'] and work['mean_busy_workers'] > 0


def test_work_timing_separates_the_workers_time_from_start_up():
  assert report.work_timing([(10.0, 12.0), (11.0, 14.0), (12.5, 13.0)], 8.0) == {
      'ranges': 3, 'seconds': 4.0, 'startup_seconds': 2.0, 'range_seconds': 5.5,
      'mean_busy_workers': 1.38}
  assert report.work_timing([], 8.0) is None


def test_report_html_is_self_contained_with_a_grid_per_class(report_run):
  page = (report_run / '_report.html').read_text()
  assert 'http://' not in page and 'https://' not in page  # opens offline
  for text in ('written', 'missing_feature', 'astronaut', 'chelsea', 'coffee',
               'First failures', 'layout'):
    assert text in page, text
  images = _embedded_images(page)
  assert len(images) == 9
  for image in images:
    pixels = np.asarray(image.convert('RGB')).astype(float)
    assert pixels.std() > 5  # a photo, not a blank tile


def test_report_says_what_was_settled_and_where_each_failure_is(report_run, tfds_dataset):
  report = json.load(open(report_run / '_report.json'))
  settled = report['settled']
  assert (settled['record'], settled['format'], settled['label_key']) == (
      'example', 'png', 'label')
  image, = settled['images']
  assert (image['key'], image['encoding'], image['format'], image['value_range'],
          image['value_range_from'], image['bit_depth'], image['passthrough']) == (
              'image', 'encoded', 'png', [0, 255], 'dtype uint8', '8', True)
  assert report['warnings'] == []
  bad = str(report_run.parent / 'bad.tfrecord')
  assert report['first_failures'][0].startswith(f'[missing_feature] {bad}, record 0, byte 0')
  page = (report_run / '_report.html').read_text()
  assert 'Settled at launch' in page and 'dtype uint8' in page and 'None.' not in page
  assert f'<td>{bad}</td><td>0</td><td>0</td><td>missing_feature</td>' in page
  # Class sections in label order (astronaut 0, coffee 1, chelsea 2), not sample order.
  assert re.findall(r'<h3>(\w+)</h3>', page) == ['astronaut', 'coffee', 'chelsea']
  captions = re.findall(r'<figcaption title="([^"]*)"', page)
  assert len(set(captions)) == len(captions) == 9


def test_uniform_images_warn_in_the_closing_line_and_the_report(unrecord, tmp_path):
  # 6-bit values stored in uint16 (0..63), written as 8-bit BMP: x / 257 rounds to 0 and
  # every image comes out black. The run succeeds; it must not look fine.
  dim = [(fixtures.photo(i, 24, 20) // 4).astype(np.uint16) for i in range(3)]
  path = fixtures.write_tfrecord(str(tmp_path / 'dim.tfrecord'), [fixtures.example(
      {'image': fixtures.bytes_feature(fixtures.serialized_tensor(x))}) for x in dim])
  out = tmp_path / 'out'
  result = unrecord('export', '--input', path, '--output', str(out), '--format', 'bmp')
  assert result.returncode == 0, result.stderr[-3000:]
  first, *_, last = result.stderr.strip().splitlines()
  assert "values 0..65535 (from dtype uint16) -> 8-bit" in first
  assert 'warning: 3 of 3 sampled images are uniform' in last
  report = json.load(open(out / '_report.json'))
  assert report['warnings'] and 'uniform' in report['warnings'][0]
  assert 'uniform' in (out / '_report.html').read_text()
  # inspect shows the same settled choices before anything is written.
  shown = json.loads(unrecord('inspect', '--input', path, '--json', check=True).stdout)
  assert shown['settled']['images'][0]['value_range'] == [0, 65535]
  assert shown['settled']['images'][0]['bit_depth'] == '16'  # its PNG default keeps 16


def test_report_renders_in_headless_chromium(report_run, tmp_path):
  chromium = shutil.which('chromium')
  if chromium is None:
    pytest.skip('chromium is not installed and `make test` could not install it '
                '(apt-get install chromium needs root and the Debian archive)')
  shot = tmp_path / 'report.png'
  subprocess.run([chromium, *CHROMIUM_FLAGS, f'--user-data-dir={tmp_path / "profile"}',
                  '--window-size=1100,1200', f'--screenshot={shot}',
                  (report_run / '_report.html').as_uri()],
                 capture_output=True, timeout=120, check=True)
  pixels = np.asarray(Image.open(shot).convert('RGB')).astype(float)
  assert pixels.shape[:2] == (1200, 1100)
  assert pixels.std() > 20  # text, cards and photos, not a blank page
  # the photos made it onto the page: some dark blue pixels of the astronaut's flag
  blue = (pixels[..., 2] > pixels[..., 0] + 40) & (pixels[..., 2] > 60)
  assert blue.sum() > 500


def test_wrong_image_key_names_the_features(unrecord, tfds_dataset, tmp_path):
  result = unrecord('export', '--input', tfds_dataset, '--output', str(tmp_path / 'o'),
                    '--image_key', 'img')
  assert result.returncode == 2
  assert "image feature 'img' not found" in result.stderr
  assert 'image (bytes[1])' in result.stderr and 'label (int64[1])' in result.stderr
  assert "likely image feature is 'image'" in result.stderr


def test_unwritable_output_names_the_path_and_the_reason(unrecord, tfds_dataset, tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('x')
  result = unrecord('export', '--input', tfds_dataset, '--output', str(blocker / 'out'))
  assert result.returncode == 2
  # Said in words (issue 43, item 11), no longer as 'Not a directory' / 'File exists'.
  assert result.stderr.strip() == (
      f"unrecord export: error: --output {str(blocker / 'out')!r} lies under "
      f"{str(blocker)!r}, which is a file, not a folder: the output root is a folder of "
      "images; name a folder (a new one is made)")


def test_nothing_matched_names_the_pattern_and_what_the_folder_holds(unrecord, tfds_dataset,
                                                                     tmp_path):
  result = unrecord('export', '--input', os.path.join(tfds_dataset, '*.tfrecords'),
                    '--output', str(tmp_path / 'o'))
  assert result.returncode == 2
  assert '*.tfrecords' in result.stderr and 'dataset_info.json' in result.stderr
  assert 'tiny_photos-train.tfrecord-00000-of-00001' in result.stderr


@pytest.mark.parametrize('gray', [False, True])
def test_a_thumbnail_holds_exactly_the_preview_pixels(gray):
  """The page's thumbnails go through the job's PNG encoder (fpng): lossless, so the
  embedded PNG decodes to the preview's pixels."""
  from transforms.pixels import preview
  pixels = fixtures.gray_photo(200, 150) if gray else fixtures.photo(1, 200, 150)
  shown = np.asarray(Image.open(io.BytesIO(report.thumbnail_png(pixels))).convert('RGB'))
  assert np.array_equal(shown, np.asarray(preview.thumbnail(pixels)))
