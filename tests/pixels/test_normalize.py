"""Normalization: ranges, rounding, layouts, colour order, mean/std, non-finite values."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tests import fixtures
from transforms import errors
from transforms.pixels import normalize

SPEC = normalize.NormalizeSpec()
uint8_images = hnp.arrays(np.uint8, hnp.array_shapes(min_dims=3, max_dims=3, min_side=1,
                                                     max_side=12).map(
                                                         lambda s: s[:2] + (3,)))


def _norm(pixels, axes='hwc', spec=SPEC, bits='8', **kwargs):
  return normalize.normalize(pixels, axes, spec, bits=bits, **kwargs)


@settings(max_examples=200, deadline=None)
@given(uint8_images, st.sampled_from(['float16', 'float32', 'float64']))
def test_unit_floats_recover_their_uint8_pixels(pixels, dtype):
  values = (pixels / 255.0).astype(dtype)
  out = _norm(values, value_range=(0.0, 1.0)).pixels
  assert out.dtype == np.uint8 and np.array_equal(out, pixels)


@settings(max_examples=200, deadline=None)
@given(uint8_images, st.sampled_from(['float16', 'float32', 'float64']))
def test_signed_unit_floats_recover_their_uint8_pixels(pixels, dtype):
  values = (pixels / 127.5 - 1.0).astype(dtype)
  out = _norm(values, value_range=(-1.0, 1.0)).pixels
  assert np.array_equal(out, pixels)


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float64, (4, 5), elements=st.floats(-1e6, 1e6)))
def test_any_finite_floats_land_in_range_and_keep_their_order(values):
  out = _norm(values, axes='hw', spec=normalize.NormalizeSpec(value_range='minmax')).pixels
  assert out.dtype == np.uint8
  flat_in, flat_out = values.ravel(), out.ravel().astype(int)
  order = np.argsort(flat_in, kind='stable')
  assert np.all(np.diff(flat_out[order]) >= 0)  # monotonic mapping


def _plain_mapping(values, low, high, top):
  """The mapping as one float64 expression: what normalize's in-place path must equal."""
  with np.errstate(over='ignore', invalid='ignore'):
    scaled = (values.astype(np.float64) - low) / (high - low) * top
  scaled = np.nan_to_num(scaled, nan=0.0, posinf=top, neginf=0.0)
  return np.clip(np.rint(scaled), 0, top)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(['float16', 'float32', 'float64']),
       st.sampled_from([(0.0, 1.0), (-1.0, 1.0), (0.0, 255.0), (0.1, 0.9), (-3.0, 7.5)]),
       st.sampled_from([('8', 255), ('16', 65535)]),
       st.lists(st.floats(-20, 300) | st.sampled_from([np.nan, np.inf, -np.inf]) |
                st.floats(allow_nan=False, allow_infinity=False),  # up to +/-1.8e308
                min_size=1, max_size=40),
       st.booleans())
def test_fast_mapping_is_bit_identical_to_the_plain_expression(dtype, value_range, depth,
                                                              values, ties):
  low, high = value_range
  bits, top = depth
  values = np.asarray(values, dtype=np.float64)
  with np.errstate(over='ignore'):  # +/-1.8e308 inputs overflow to +/-inf: also tested
    if ties:  # values landing exactly on (or one rounding away from) k + 0.5
      values = (np.floor(values) + 0.5) / top * (high - low) + low
    values = values.astype(dtype).reshape(1, -1)
  spec = normalize.NormalizeSpec(non_finite='clip')
  out = _norm(values, axes='hw', spec=spec, bits=bits, value_range=value_range).pixels
  assert np.array_equal(out, _plain_mapping(values, low, high, top))


def test_rounds_to_nearest_never_truncates():
  values = np.array([[10.4, 10.6, 254.6, 0.49]], dtype=np.float32) / 255.0
  out = _norm(values, axes='hw', value_range=(0.0, 1.0)).pixels
  assert out.tolist() == [[10, 11, 255, 0]]


def test_values_outside_the_range_are_clipped():
  values = np.array([[-0.2, 0.5, 1.3]], dtype=np.float32)
  assert _norm(values, axes='hw', value_range=(0.0, 1.0)).pixels.tolist() == [[0, 128, 255]]


def test_uint8_stays_and_uint16_keeps_or_scales_with_rounding():
  pixels = fixtures.photo()
  assert _norm(pixels).pixels is pixels
  depth = fixtures.photo_16bit()
  assert np.array_equal(_norm(depth, axes='hw', bits='16').pixels, depth)
  scaled = _norm(depth, axes='hw', bits='8').pixels
  assert np.array_equal(scaled, np.rint(depth / 257.0).astype(np.uint8))


@pytest.mark.parametrize('values,dtype,expected', [
    ([0.0, 0.7], 'float32', (0.0, 1.0)), ([-0.9, 0.4], 'float32', (-1.0, 1.0)),
    ([0.0, 200.0], 'float64', (0.0, 255.0)), ([-3.0, 900.0], 'float32', (-3.0, 900.0)),
    ([0.0, 1.0004], 'float32', (0.0, 1.0)), ([0, 200], 'int64', (0, 255)),
    ([0, 4000], 'int32', (0, 65535)), ([-5, 70000], 'int64', (-5, 70000)),
    ([0, 3], 'uint8', (0, 255)), ([0, 3], 'uint16', (0, 65535)),
])
def test_detect_range(values, dtype, expected):
  assert normalize.detect_range(np.array(values, dtype=dtype)) == pytest.approx(expected)


def test_chw_becomes_hwc_and_single_channel_becomes_gray():
  pixels = fixtures.photo()
  assert np.array_equal(_norm(pixels.transpose(2, 0, 1), axes='chw').pixels, pixels)
  gray = fixtures.gray_photo()
  out = _norm(gray[:, :, None]).pixels
  assert out.shape == gray.shape and np.array_equal(out, gray)


def test_more_than_four_channels_is_a_shape_mismatch():
  with pytest.raises(errors.DecodeError) as info:
    _norm(np.zeros((4, 4, 6), np.uint8))
  assert info.value.reason == 'shape_mismatch' and '6 channels' in str(info.value)


def test_bgr_input_is_swapped_to_rgb_keeping_alpha():
  rgba = np.dstack([fixtures.photo(), np.full((48, 40), 7, np.uint8)])
  bgra = rgba[..., [2, 1, 0, 3]]
  out = _norm(bgra, spec=normalize.NormalizeSpec(channel_order='bgr')).pixels
  assert np.array_equal(out, rgba)


@pytest.mark.parametrize('preset', ['imagenet', 'imagenet_255', 'half'])
def test_mean_std_is_undone_exactly(preset):
  mean, std = normalize.preset(preset)
  pixels = fixtures.photo(2)
  scale = 255.0 if preset == 'imagenet_255' else 1.0
  tensor = ((pixels / 255.0 * scale - np.array(mean)) / np.array(std)).astype(np.float32)
  spec = normalize.NormalizeSpec(mean=mean, std=std)
  out = _norm(tensor, spec=spec, value_range=(0.0, scale)).pixels
  assert np.array_equal(out, pixels)


def test_non_finite_values_fail_by_default_and_clip_on_request():
  values = np.array([[0.5, np.nan, np.inf, -np.inf]], dtype=np.float32)
  with pytest.raises(errors.DecodeError) as info:
    _norm(values, axes='hw', value_range=(0.0, 1.0))
  assert info.value.reason == 'non_finite' and '3 NaN/Inf' in str(info.value)
  out = _norm(values, axes='hw', value_range=(0.0, 1.0),
              spec=normalize.NormalizeSpec(non_finite='clip')).pixels
  assert out.tolist() == [[128, 0, 255, 0]]


def test_float_bit_depth_keeps_float32_values():
  values = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
  out = _norm(values, axes='hw', bits='float').pixels
  assert out.dtype == np.float32 and np.array_equal(out, values)


@pytest.mark.parametrize('dtype,depth,holds16,value_range,expected', [
    ('uint16', 'auto', True, None, '16'), ('uint16', 'auto', False, None, '8'),
    ('uint8', 'auto', True, None, '8'), ('float32', 'auto', True, (0, 1), '8'),
    ('int32', 'auto', True, (0, 65535), '16'), ('uint8', '16', True, None, '16'),
])
def test_target_bits(dtype, depth, holds16, value_range, expected):
  assert normalize.target_bits(dtype, depth, holds16, False, value_range) == expected


def test_bad_settings_are_config_errors():
  for kwargs in ({'value_range': '1,0'}, {'value_range': 'x'}, {'channel_order': 'rgba'},
                 {'bit_depth': '12'}, {'mean': (0.5,)}, {'mean': (0.5,), 'std': (0,)}):
    with pytest.raises(errors.ConfigError):
      normalize.NormalizeSpec(**kwargs)


def _near_half_steps(low, high, count, seed):
  """float32 values in [low, high] one to three float32 steps either side of the points
  that map to k + 0.5: where rounding in float32 and in float64 can disagree."""
  rng = np.random.default_rng(seed)
  steps = rng.integers(0, 255, count) + 0.5
  exact = (steps / 255 * (high - low) + low).astype(np.float32)
  nudges = rng.choice([-3, -2, -1, 1, 2, 3], count)
  for i, steps in enumerate(nudges):  # float32 steps; stepping the bits of 0.0 gives NaN
    for _ in range(abs(steps)):
      exact[i] = np.nextafter(exact[i], np.float32(np.inf if steps > 0 else -np.inf))
  return np.clip(exact, np.float32(low), np.float32(high))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([(0.0, 1.0), (-1.0, 1.0), (0.0, 255.0), (0.1, 0.9), (-3.0, 7.5),
                        (-0.3, 2.0), (1e-3, 4e6)]),
       st.sampled_from(['float32', 'float64']),
       st.integers(0, 2**32 - 1),
       st.integers(0, 3),
       st.sampled_from([(30, 100), (10, 100, 3), (25, 30, 4)]))
def test_one_pass_uint8_mapping_is_bit_identical_to_the_float64_expression(
    value_range, dtype, seed, ties, shape):
  low, high = value_range
  rng = np.random.default_rng(seed)
  values = rng.uniform(low, high, 3000).astype(dtype)  # arbitrary floats: a few land
  if ties:                                             # within 1e-3 of a half-step
    values[:ties] = _near_half_steps(low, high, ties, seed)
  values = np.clip(values, low, high).astype(dtype).reshape(shape)
  extent = (float(values.min()), float(values.max()))
  fast = normalize._map_range_to_uint8(values, low, high, extent)
  assert fast is not None and fast.dtype == np.uint8
  assert np.array_equal(fast, _plain_mapping(values, low, high, 255))


def test_one_pass_uint8_mapping_serves_photos_and_leaves_the_rest_to_float64():
  photo = fixtures.photo(height=64, width=64).astype(np.float32) / 255
  out = _norm(photo, value_range=(0.0, 1.0)).pixels
  assert np.array_equal(out, _plain_mapping(photo, 0.0, 1.0, 255))
  assert np.array_equal(normalize._map_range_to_uint8(photo, 0.0, 1.0, (0.0, 1.0)), out)
  # outside the range (clipping), and float16, take the float64 path
  assert normalize._map_range_to_uint8(photo * 1.5, 0.0, 1.0, (0.0, 1.5)) is None
  assert normalize._map_range_to_uint8(photo.astype(np.float16), 0.0, 1.0, (0.0, 1.0)) is None


def _misaligned(values):
  """`values` as a read-only view one byte into a buffer, as the layout path leaves a
  tensor's pixels in its record."""
  data = b'\0' + values.tobytes()
  view = np.frombuffer(data, values.dtype, values.size, 1).reshape(values.shape)
  assert not view.flags.aligned and not view.flags.writeable
  return view


_EDGE_FLOATS = (st.floats(-2, 2) | st.floats(allow_nan=False, allow_infinity=False) |
                st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0, 5e-324, 1e-40]))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(['float32', 'float64']),
       st.sampled_from([(3, 4), (2, 3, 3), (1, 7), (5, 1, 4)]), st.data())
def test_the_opencv_extent_is_the_numpy_extent_at_any_alignment(dtype, shape, data):
  with np.errstate(over='ignore'):
    values = np.asarray(data.draw(st.lists(_EDGE_FLOATS, min_size=int(np.prod(shape)),
                                           max_size=int(np.prod(shape)))),
                        dtype=np.float64).astype(dtype).reshape(shape)
  expected = normalize.value_extent(values, finite_only=False)
  for view in (values, _misaligned(values)):
    got = normalize._float_extent(view)
    assert np.array_equal(got, expected, equal_nan=True), (got, expected)


def _outcome(pixels, axes, spec, bits, value_range):
  try:
    result = normalize.normalize(pixels, axes, spec, bits=bits, value_range=value_range)
  except errors.UnrecordError as e:
    return e.reason, str(e)
  return (result.pixels.dtype, result.pixels.shape, result.pixels.tobytes(),
          result.value_range, result.steps)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(['float32', 'float64', 'float16', 'uint16', 'int32']),
       st.sampled_from([('hwc', (3, 4, 3)), ('chw', (3, 2, 4)), ('hw', (4, 5)),
                        ('hwc', (2, 3, 4))]),
       st.sampled_from(['8', '16', 'float']),
       st.sampled_from([None, (0.0, 1.0), (-1.0, 1.0), (0.0, 255.0)]),
       st.sampled_from([SPEC, normalize.NormalizeSpec(non_finite='clip'),
                        normalize.NormalizeSpec(value_range='minmax'),
                        normalize.NormalizeSpec(channel_order='bgr'),
                        normalize.NormalizeSpec(mean=(0.5,), std=(0.25,))]),
       st.data())
def test_misaligned_pixels_normalize_as_their_aligned_copy(dtype, layout, bits,
                                                           value_range, spec, data):
  axes, shape = layout
  elements = _EDGE_FLOATS if dtype.startswith('float') else st.integers(0, 65535)
  with np.errstate(over='ignore', invalid='ignore'):
    values = np.asarray(data.draw(st.lists(elements, min_size=int(np.prod(shape)),
                                           max_size=int(np.prod(shape)))),
                        dtype=np.float64).astype(dtype).reshape(shape)
  with np.errstate(all='ignore'):
    expected = _outcome(values, axes, spec, bits, value_range)
    got = _outcome(_misaligned(values), axes, spec, bits, value_range)
  assert got == expected


def test_float_photos_map_to_8_bit_from_a_misaligned_view_without_a_copy(monkeypatch):
  photo = fixtures.photo(height=64, width=64).astype(np.float32) / 255
  expected = _norm(photo, value_range=(0.0, 1.0))
  copied = []
  original = normalize.aligned
  monkeypatch.setattr(normalize, 'aligned',
                      lambda a: copied.append(not a.flags.aligned) or original(a))
  out = _norm(_misaligned(photo), value_range=(0.0, 1.0))
  assert np.array_equal(out.pixels, _plain_mapping(photo, 0.0, 1.0, 255))
  assert out.steps == expected.steps and out.value_range == expected.value_range
  assert not any(copied)
  # a step NumPy does (here the range detected on the image) takes an aligned copy
  _norm(_misaligned(photo))
  assert any(copied)


# -- value signatures (docs/export.md, "Normalization": Signatures) ------------------

def _info(low, high, channels=None, dtype='float32'):
  from transforms.images import schema  # pylint: disable=import-outside-toplevel
  return schema.ImageInfo('image', 'tensor', dtype, [8, 8, 3], 'hwc', [low, high],
                          channel_ranges=channels)


def test_preset_extents_come_from_the_preset_constants():
  assert normalize.preset_extent('imagenet')[0] == pytest.approx((-0.485 / 0.229,
                                                                   0.515 / 0.229))
  assert normalize.preset_extent('imagenet')[2][1] == pytest.approx(0.594 / 0.225)
  assert np.allclose(normalize.preset_extent('imagenet_255'),
                     normalize.preset_extent('imagenet'))


@pytest.mark.parametrize('low, high, channels, expected', [
    (-2.1179, 2.1694, None, ('ImageNet mean/std', ('--mean', 'imagenet'), False)),
    # a sample that covers only part of the box, channel by channel
    (-1.9, 2.0, [[-1.9, 1.5], [-1.2, 2.0], [-1.0, 1.8]],
     ('ImageNet mean/std', ('--mean', 'imagenet'), False)),
    (-1.79, 2.14, [[-1.79, 1.93], [-1.75, 2.07], [-1.48, 2.14]],
     ('CLIP mean/std', ('--mean', 'clip'), False)),
    (0.0, 1.0, None, ('[0,1]', ('--value_range=0,1',), True)),
    (-1.0, 0.6, None, ('[-1,1]', ('--value_range=-1,1',), True)),
    (0.0, 200.0, None, ('[0,255]', ('--value_range=0,255',), True)),
    (10.0, 60000.0, None, ('[0,65535]', ('--value_range=0,65535',), False)),
    (-1.2, 1.5, None, None),  # inside a box, but not near its low end: no claim
    (-5.0, 5.0, None, None),
    (-2.1179, 2.64, [[-2.1179, 2.2489], [-2.0357, 2.4286], [-1.8044, 3.5]], None),
])
def test_value_signature(low, high, channels, expected):
  found = normalize.value_signature(_info(low, high, channels))
  assert (found and (found.name, found.flags, found.auto)) == expected


def test_a_suggestion_only_when_the_settings_would_read_it_wrong():
  info = _info(-2.1179, 2.1694)
  assert normalize.suggestion(normalize.NormalizeSpec(), info)['flags'] == ['--mean',
                                                                            'imagenet']
  assert normalize.suggestion(normalize.NormalizeSpec(mean=(0.5,), std=(0.5,)), info) is None
  assert normalize.suggestion(normalize.NormalizeSpec(value_range='-3,3'), info) is None
  assert normalize.suggestion(normalize.NormalizeSpec(), _info(0, 1)) is None
