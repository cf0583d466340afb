"""Corruption matrices: every byte flipped, every truncation, on a ~2 KB TFRecord.

Every variant goes through the pure path (read -> decode -> render, what each worker
runs) and through the job itself, as one subprocess run over all variant files. The whole
matrix takes seconds, so `make test` runs all of it; nothing is sampled.
"""

import io
import json
import os
import time

import cv2
import numpy as np

from tests import fixtures
from transforms import errors
from transforms.images import decode
from transforms.images import render
from transforms.inputs import tfrecord
from transforms.pixels import encode

PHOTOS = [fixtures.photo(i, 8, 8) for i in range(7)]


def _sample():
  """A ~2 KB TFRecord of 7 photo crops, and the byte span of each frame."""
  frames = [tfrecord.encode_record(fixtures.example({
      'image': fixtures.bytes_feature(fixtures.serialized_tensor(photo)),
      'id': fixtures.bytes_feature(b'p%d' % i)})) for i, photo in enumerate(PHOTOS)]
  spans, start = [], 0
  for frame in frames:
    spans.append((start, start + len(frame)))
    start += len(frame)
  return b''.join(frames), spans


DATA, SPANS = _sample()
CONFIG = render.RenderConfig(encode=encode.EncodeSpec('png'), name_template='{id}.{ext}',
                             id_key='id')


def _frame_of(offset):
  return next(k for k, (start, end) in enumerate(SPANS) if start <= offset < end)


def expected_flip(offset):
  """(written indices, {damaged index: reason}) after flipping the byte at `offset`."""
  damaged = _frame_of(offset)
  return [k for k in range(len(PHOTOS)) if k != damaged], {damaged: 'crc_mismatch'}


def expected_cut(length):
  """The same after cutting the file to `length` bytes."""
  whole = [k for k, (_, end) in enumerate(SPANS) if end <= length]
  inside = [k for k, (start, end) in enumerate(SPANS) if start < length < end]
  return whole, {k: 'truncated' for k in inside}


def run_pure(data):
  """What a worker does with one file: returns (written indices, {index: reason})."""
  written, dead = [], {}
  for slot in tfrecord.read_records(io.BytesIO(data), 'variant', size=len(data)):
    if isinstance(slot, errors.CorruptRecordError):
      dead[slot.index] = slot.reason
      continue
    ref, payload = slot
    (image,) = decode.decode_record(ref, payload, decode.ImageSpec(key='image'))
    png = render.render(image, CONFIG).data
    pixels = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), 1), cv2.COLOR_BGR2RGB)
    assert np.array_equal(pixels, PHOTOS[ref.index]), 'a wrong image would be written'
    written.append(ref.index)
  return written, dead


def test_sample_is_about_2kb_with_several_records():
  assert 1500 <= len(DATA) <= 2500 and len(SPANS) == 7


def test_every_byte_flip_costs_exactly_its_record():
  for offset in range(len(DATA)):
    variant = bytearray(DATA)
    variant[offset] ^= 0xFF
    assert run_pure(bytes(variant)) == expected_flip(offset), offset


def test_every_truncation_keeps_every_whole_record():
  for length in range(len(DATA)):
    assert run_pure(DATA[:length]) == expected_cut(length), length


def _write_variants(folder, stride=1):
  """Flip and cut variants as files; returns {file stem: expected outcome}."""
  expected = {}
  for offset in range(0, len(DATA), stride):
    variant = bytearray(DATA)
    variant[offset] ^= 0xFF
    stem = f'flip{offset:05d}'
    (folder / f'{stem}.tfrecord').write_bytes(bytes(variant))
    expected[stem] = expected_flip(offset)
  for length in range(1, len(DATA), stride):
    stem = f'cut{length:05d}'
    written, dead = expected_cut(length)
    if not written and not dead:
      continue  # cut before the first frame ends with nothing inside: an empty outcome
    (folder / f'{stem}.tfrecord').write_bytes(DATA[:length])
    expected[stem] = (written, dead)
  return expected


def test_the_job_over_corrupted_variants(unrecord, tmp_path):
  """One job run over many variant files: exactly the damaged records are dead-lettered."""
  folder = tmp_path / 'variants'
  folder.mkdir()
  expected = _write_variants(folder, 1)
  out = tmp_path / 'out'
  started = time.time()
  result = unrecord('export', '--input', str(folder), '--output', str(out),
                    '--image_key', 'image', '--name_template', '{stem}/{index}.{ext}',
                    '--max_failures', '1000000', timeout=3000)
  seconds = time.time() - started
  assert result.returncode == 0, result.stderr[-3000:]
  dead = {}
  for line in open(out / '_dead_letter.jsonl'):
    row = json.loads(line)
    stem = os.path.basename(row['source']).split('.')[0]
    dead.setdefault(stem, {})[row['index']] = row['reason']
  for stem, (written, damaged) in expected.items():
    files = sorted(int(n.split('.')[0]) for n in os.listdir(out / stem)) \
        if (out / stem).exists() else []
    assert files == written, stem
    assert dead.get(stem, {}) == damaged, stem
    for index in written:
      pixels = cv2.cvtColor(cv2.imread(str(out / stem / f'{index}.png')),
                            cv2.COLOR_BGR2RGB)
      assert np.array_equal(pixels, PHOTOS[index]), (stem, index)
  figures = {'variants': len(expected), 'seconds': round(seconds, 1),
             'bytes_flipped': sum(1 for s in expected if s.startswith('flip')),
             'cuts': sum(1 for s in expected if s.startswith('cut'))}
  print('corruption matrix (job):', json.dumps(figures))
