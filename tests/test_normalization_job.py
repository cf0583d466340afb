"""Every normalization option through the whole job, on TensorFlow-written tensors of real
photographs, checked pixel for pixel against docs/export.md's rule: `--mean/--std` undone as
`x * std + mean` (float64), then `rint((x - low) / (high - low) * top)`, ties to even,
clipped to the range."""

import os

import cv2
import numpy as np
import pytest

from tests import fixtures
from tests.test_export_job import _export, _manifest

MEANS = {'imagenet': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
         'imagenet_255': ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
         'clip': ((0.48145466, 0.4578275, 0.40821073),
                  (0.26862954, 0.26130258, 0.27577711)),
         'half': ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


def _rule(x, low, high, top=255, dtype=np.uint8):
  x = np.clip(x.astype(np.float64), low, high)
  return np.rint((x - low) / (high - low) * top).astype(dtype)


def _photos(count=3):
  return [fixtures.photo(i, 24, 20).astype(np.float64) for i in range(count)]


def _out_of_range(x, low, high):
  x = x.copy()
  x[0, 0, 0], x[0, 1, 1] = high + (high - low) * 0.3, low - (high - low) * 0.2
  return x


def _normalized(name):
  mean, std = (np.asarray(v) for v in MEANS[name])
  scale = 1.0 if name == 'imagenet_255' else 255.0
  high = 255.0 if name == 'imagenet_255' else 1.0
  return (lambda p: ((p / scale - mean) / std).astype(np.float32),
          lambda x: _rule(x.astype(np.float64) * std + mean, 0, high))


# name: (stored from a photo, export arguments, expected pixels from the stored array)
CASES = {
    'range_0_1_clips': (lambda p: _out_of_range(p / 255, 0, 1).astype(np.float32),
                        ['--value_range', '0,1'], lambda x: _rule(x, 0, 1)),
    'range_0_255_ties_to_even': (lambda p: (p + 0.5).astype(np.float32),
                                 ['--value_range', '0,255'], lambda x: _rule(x, 0, 255)),
    'range_lo_hi': (lambda p: p.astype(np.uint8), ['--value_range', '20,220'],
                    lambda x: _rule(x, 20, 220)),
    'range_-1_1': (lambda p: (p / 127.5 - 1).astype(np.float32), ['--value_range=-1,1'],
                   lambda x: _rule(x, -1, 1)),
    'minmax_per_image': (lambda p: (p * 3 - 100).astype(np.int32),
                         ['--value_range', 'minmax'],
                         lambda x: _rule(x, x.min(), x.max())),
    'auto_int16_sample_range': (lambda p: (p * 4 - 300).astype(np.int16), [],
                                None),  # expected: the sample's min..max, set below
    'mean_std_numbers': (lambda p: ((p / 255 - 0.5) / 0.25).astype(np.float32),
                         ['--mean', '0.5', '--std', '0.25'],
                         lambda x: _rule(x.astype(np.float64) * 0.25 + 0.5, 0, 1)),
    **{f'mean_preset_{name}': (*_normalized(name)[:1], ['--mean', name.upper()],
                               _normalized(name)[1]) for name in MEANS},
    'channel_order_bgr': (lambda p: p[:, :, ::-1].astype(np.uint8),
                          ['--channel_order', 'bgr'], lambda x: x[:, :, ::-1]),
    'non_finite_clip': (lambda p: _non_finite(p / 255), ['--non_finite', 'clip'],
                        lambda x: _rule(np.nan_to_num(x, nan=0, posinf=1, neginf=0), 0, 1)),
}


def _non_finite(x):
  x = x.astype(np.float32)
  x[0, 0, 0], x[1, 1, 1], x[2, 2, 2] = np.nan, np.inf, -np.inf
  return x


def _export_tensors(unrecord, tmp_path, stored, *args):
  path = fixtures.write_tfrecord(str(tmp_path / 'in.tfrecord'), [fixtures.example(
      {'image': fixtures.bytes_feature(fixtures.serialized_tensor(x))}) for x in stored])
  out = str(tmp_path / 'out')
  result = _export(unrecord, '--input', path, '--output', out, *args)
  rows = sorted(_manifest(out), key=lambda r: r['index'])
  assert len(rows) == len(stored), result.stderr[-3000:]
  return out, rows


def _read(out, row):
  pixels = cv2.imread(os.path.join(out, row['path']), cv2.IMREAD_UNCHANGED)
  return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB) if pixels.ndim == 3 else pixels


@pytest.mark.parametrize('case', sorted(CASES))
def test_option_gives_the_readme_pixels(unrecord, tmp_path, case):
  make, args, expected = CASES[case]
  stored = [make(p) for p in _photos()]
  if expected is None:  # auto on int16: the run's one range is the sample's min..max
    low = min(int(x.min()) for x in stored)
    high = max(int(x.max()) for x in stored)
    expected = lambda x: _rule(x, low, high)  # pylint: disable=unnecessary-lambda-assignment
  out, rows = _export_tensors(unrecord, tmp_path, stored, *args)
  for row, x in zip(rows, stored):
    assert np.array_equal(_read(out, row), expected(x)), (case, row)
    assert row['dtype_out'] == 'uint8'


def test_uint16_stays_16bit_or_becomes_x_over_257(unrecord, tmp_path):
  stored = [fixtures.photo_16bit(24, 20), np.ascontiguousarray(
      fixtures.photo_16bit(24, 20)[::-1])]
  out, rows = _export_tensors(unrecord, tmp_path / 'a', stored, '--value_range', '0,65535')
  for row, x in zip(rows, stored):
    assert row['dtype_out'] == 'uint16' and np.array_equal(_read(out, row), x)
  out, rows = _export_tensors(unrecord, tmp_path / 'b', stored, '--bit_depth', '8')
  for row, x in zip(rows, stored):
    assert np.array_equal(_read(out, row), np.rint(x / 257).astype(np.uint8))


def test_8bit_data_as_16bit_and_float_kept_as_float(unrecord, tmp_path):
  photos = [p.astype(np.uint8) for p in _photos(2)]
  out, rows = _export_tensors(unrecord, tmp_path / 'a', photos, '--bit_depth', '16')
  for row, p in zip(rows, photos):
    assert row['dtype_out'] == 'uint16'
    assert np.array_equal(_read(out, row), p.astype(np.uint16) * 257)
  floats = [(p / 255 * 1.5 - 0.2).astype(np.float32) for p in _photos(2)]
  out, rows = _export_tensors(unrecord, tmp_path / 'b', floats, '--bit_depth', 'float',
                              '--format', 'tiff')
  for row, x in zip(rows, floats):
    assert row['dtype_out'] == 'float32' and np.array_equal(_read(out, row), x)


def test_tensor_layout_decides_an_ambiguous_axis(unrecord, tmp_path):
  # 3 x 20 x 3: three rows of an RGB image (HWC, the auto choice) or a 3-channel 20x3
  # image stored CHW. Each flag gives its reading.
  photo = fixtures.photo(0, 20, 3)  # 20 x 3 x 3 HWC
  chw = np.ascontiguousarray(photo.transpose(2, 0, 1))  # 3 x 20 x 3
  out, (row,) = _export_tensors(unrecord, tmp_path / 'chw', [chw], '--tensor_layout', 'chw')
  assert np.array_equal(_read(out, row), photo) and row['shape_out'] == [20, 3, 3]
  out, (row,) = _export_tensors(unrecord, tmp_path / 'hwc', [chw], '--tensor_layout', 'hwc')
  assert np.array_equal(_read(out, row), chw) and row['shape_out'] == [3, 20, 3]
