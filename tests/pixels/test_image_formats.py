"""JPEG headers read without Pillow (`image_formats._jpeg_frame`) give Pillow's answer."""

import io
import random
import re

import cv2
import pytest
import tensorflow as tf
from PIL import Image

from tests import fixtures
from transforms import errors
from transforms.pixels import image_formats


def _pillow_jpeg(image, **options):
  out = io.BytesIO()
  image.save(out, 'JPEG', **options)
  return out.getvalue()


def _jpegs():
  """JPEGs as TensorFlow, Pillow and OpenCV write them, in the layouts photos come in."""
  rgb, gray = fixtures.photo(1, 40, 56), fixtures.gray_photo(33, 21)
  photo = Image.fromarray(rgb)
  exif = Image.Exif()
  exif[0x010F] = 'camera maker'
  return {
      'tf_rgb': tf.io.encode_jpeg(rgb, quality=90).numpy(),
      'tf_gray': tf.io.encode_jpeg(gray[:, :, None]).numpy(),
      'tf_progressive': tf.io.encode_jpeg(rgb, progressive=True).numpy(),
      'tf_density': tf.io.encode_jpeg(rgb, density_unit='cm', x_density=118,
                                      y_density=118).numpy(),
      'pillow': _pillow_jpeg(photo),
      'pillow_optimized_progressive': _pillow_jpeg(photo, optimize=True, progressive=True),
      'pillow_comment': _pillow_jpeg(photo, comment=b'a comment'),
      'pillow_exif': _pillow_jpeg(photo, exif=exif.tobytes()),
      'pillow_icc': _pillow_jpeg(photo, icc_profile=b'\0' * 300),
      'pillow_cmyk': _pillow_jpeg(photo.convert('CMYK')),
      'opencv_restart_interval': cv2.imencode(
          '.jpg', rgb, [cv2.IMWRITE_JPEG_RST_INTERVAL, 2])[1].tobytes(),
      'opencv_gray': cv2.imencode('.jpg', gray)[1].tobytes(),
  }


def _answer(data, max_pixels=image_formats.DEFAULT_MAX_PIXELS):
  """check_encoded's result, or the reason and message it raised."""
  try:
    return image_formats.check_encoded(data, None, max_pixels)
  except errors.UnrecordError as e:
    # Pillow names its BytesIO in some messages; the address differs between two opens.
    return type(e).__name__, e.reason, re.sub(r' at 0x[0-9a-f]+', '', str(e))


def _pillow_answer(data, monkeypatch, max_pixels=image_formats.DEFAULT_MAX_PIXELS):
  with monkeypatch.context() as patch:
    patch.setattr(image_formats, '_jpeg_frame', lambda _: None)
    return _answer(data, max_pixels)


@pytest.mark.parametrize('name', sorted(_jpegs()))
def test_every_layout_gets_pillows_answer(name, monkeypatch):
  data = _jpegs()[name]
  assert _answer(data) == _pillow_answer(data, monkeypatch)


def test_the_plain_layouts_photos_come_in_are_read_without_pillow():
  jpegs = _jpegs()
  read = {name for name, data in jpegs.items() if image_formats._jpeg_frame(data)}
  assert read == {'tf_rgb', 'tf_gray', 'tf_progressive', 'tf_density', 'pillow',
                  'pillow_optimized_progressive', 'pillow_comment',
                  'opencv_restart_interval', 'opencv_gray'}
  assert image_formats._jpeg_frame(jpegs['tf_rgb']) == (40, 56, 3)
  assert image_formats._jpeg_frame(jpegs['tf_gray']) == (33, 21, 1)


def test_the_pixel_limit_and_a_lying_size_give_pillows_errors(monkeypatch):
  data = bytearray(_jpegs()['tf_rgb'])
  assert _answer(bytes(data), 40 * 56 - 1) == _pillow_answer(bytes(data), monkeypatch,
                                                              40 * 56 - 1)
  assert _answer(bytes(data), 40 * 56 - 1)[1] == errors.TOO_MANY_PIXELS
  sof = bytes(data).index(b'\xff\xc0')
  data[sof + 5:sof + 9] = b'\xff\xf0\xff\xf0'  # 65520 x 65520 in a few hundred bytes
  assert _answer(bytes(data)) == _pillow_answer(bytes(data), monkeypatch)
  assert _answer(bytes(data))[1] == errors.TOO_MANY_PIXELS


def _segment(data, marker):
  """(start, end) of the first segment with this marker byte."""
  at = data.index(bytes([0xFF, marker]), 2)
  return at, at + 2 + int.from_bytes(data[at + 2:at + 4], 'big')


def _replace_segment(data, marker, body):
  start, end = _segment(data, marker)
  return (data[:start] + bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, 'big') + body
          + data[end:])


def test_headers_pillow_rejects_are_left_to_pillow(monkeypatch):
  data = _jpegs()['tf_rgb']
  jfif = data[_segment(data, 0xE0)[0] + 4:_segment(data, 0xE0)[1]]
  dqt = data[_segment(data, 0xDB)[0] + 4:_segment(data, 0xDB)[1]]
  sof = data[_segment(data, 0xC0)[0] + 4:_segment(data, 0xC0)[1]]
  damaged = {
      'short JFIF': _replace_segment(data, 0xE0, jfif[:6]),
      'DQT table marked 16-bit': _replace_segment(data, 0xDB, bytes([dqt[0] | 0x10]) +
                                                  dqt[1:]),
      'zero height': _replace_segment(data, 0xC0, sof[:1] + b'\0\0' + sof[3:]),
      '12-bit frame': _replace_segment(data, 0xC0, b'\x0c' + sof[1:]),
  }
  for name, mutant in damaged.items():
    assert image_formats._jpeg_frame(mutant) is None, name
    assert _answer(mutant) == _pillow_answer(mutant, monkeypatch), name
    assert _answer(mutant)[0] == 'DecodeError', name  # Pillow cannot read any of them


def _mutants(original, rng, count):
  """`count` copies of a JPEG with random damage to its header (see below)."""
  header_end = original.index(b'\xff\xda') + 2
  segments = [m.start() for m in re.finditer(rb'\xff[\xc0-\xfe]', original[:header_end])]
  for _ in range(count):
    data = bytearray(original)
    for _ in range(rng.choice((1, 1, 2, 3))):
      at = (rng.choice(segments) + rng.randrange(1, 11) if rng.random() < 0.5 else
            rng.randrange(2, header_end))
      at = min(at, len(data) - 65)
      action = rng.randrange(5)
      if action == 0:
        data[at] ^= 1 << rng.randrange(8)
      elif action == 1:
        data[at] = rng.choice((0x00, 0xFF, 0xC0, 0xC2, 0xDA, 0xDB, 0xE0))
      elif action == 2:
        del data[at]
      elif action == 3:
        data.insert(at, data[at])
      else:
        data = data[:at] + original[-64:]  # cut, but the end marker is still there
    yield bytes(data)


# Pillow warns while it reads the damaged Exif of some mutants (the reference answer).
@pytest.mark.filterwarnings('ignore::UserWarning:PIL.TiffImagePlugin')
def test_damaged_headers_get_pillows_answer(monkeypatch):
  """Random damage to the header bytes: each mutant gets the answer Pillow alone gives.

  The header ends where the first scan starts; bytes are flipped, set to 0xFF or 0x00,
  dropped or duplicated there, or the data is cut inside it. Half the damage lands on
  the first bytes of a segment (marker, length, identifier, table and frame fields),
  where a header is decided.
  """
  rng = random.Random(7)
  read_without_pillow = 0
  for name, original in sorted(_jpegs().items()):
    header_end = original.index(b'\xff\xda') + 2
    for data in _mutants(original, rng, 300):
      read_without_pillow += image_formats._jpeg_frame(data) is not None
      assert _answer(data) == _pillow_answer(data, monkeypatch), (name, data[:header_end])
  # Many mutants stay plain (a flipped bit in a table or a size), so the comparison
  # covers the fast reader, not only its refusals.
  assert read_without_pillow > 200


def test_a_remembered_header_gives_the_answer_a_walk_gives(monkeypatch):
  """Originals, mutants and copies cut around the first scan's header, in random order
  and under changing pixel limits: each answer is the walk's, and many come from the header
  kept from an earlier JPEG."""
  rng = random.Random(11)
  items = []
  for original in _jpegs().values():  # each JPEG's copies in a random order
    scan = original.index(b'\xff\xda')
    group = [original] * 20 + list(_mutants(original, rng, 60))
    group += [original[:scan + cut] for cut in range(0, 16)]
    rng.shuffle(group)
    items += group
  walks = []
  walk = image_formats._walk_jpeg_header
  monkeypatch.setattr(image_formats, '_walk_jpeg_header',
                      lambda data: walks.append(1) or walk(data))
  for i, data in enumerate(items):
    if i % 97 == 0:  # the limit a frame was accepted under changes now and then
      monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', rng.choice((None, 40 * 56 - 1, 10**8)))
    assert image_formats._jpeg_frame(data) == walk(data)[0], i
  assert len(items) - len(walks) > 50  # answered from the kept header
