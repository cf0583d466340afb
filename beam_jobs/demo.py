"""`make demo`: builds TFRecords from real photographs, exports them, says where they are.

Needs only the runtime and scikit-image (`pip install '.[demo]'`): no TensorFlow.

The photographs are the ones scikit-image ships (no download). The records are written
with unrecord's own TFRecord writer in four common layouts, then each set is exported by
the real job on DirectRunner:

  tensors    float32 [0,1] serialized tensors with id and label -> PNG
  raw        raw uint8 bytes with image/shape, GZIP-compressed    -> JPEG
  encoded    TFDS-style encoded PNG with class labels             -> class folders
  batched    NCHW uint8 batches of 4                              -> one PNG per image

Then it draws `contact_sheet.png`: the first images each export wrote, read back from the
files, captioned with their paths, so one picture shows the whole result.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import shutil
import sys
import time
from typing import List

import numpy as np
from PIL import Image

from beam_jobs import export_images
from transforms.inputs import tfrecord
from transforms.output import manifest
from transforms.output import report
from transforms.output import root_files
from transforms.pixels import preview
from transforms.records import example
from transforms.records import tensor_proto

PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket', 'immunohistochemistry',
          'hubble_deep_field', 'retina')
CLASSES = ('people', 'objects', 'animals')
_CLASS_OF = {'astronaut': 0, 'coffee': 1, 'chelsea': 2, 'rocket': 1,
             'immunohistochemistry': 1, 'hubble_deep_field': 1,
             'retina': 1}


def tiles(size: int = 128, per_photo: int = 3):
  """(photo name, HxWx3 uint8 tile) crops of scikit-image's bundled photographs."""
  import skimage.data  # a demo/test dependency, not needed by the job itself
  for name in PHOTOS:
    image = np.asarray(getattr(skimage.data, name)())[:, :, :3]
    height, width = image.shape[:2]
    for k in range(per_photo):
      top = (height - size) * k // max(per_photo - 1, 1)
      left = (width - size) * (per_photo - 1 - k) // max(per_photo - 1, 1)
      yield name, np.ascontiguousarray(image[top:top + size, left:left + size])


def _png(pixels: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format='PNG')
  return out.getvalue()


def build_sample(folder: str) -> dict:
  """Writes the four sample datasets under `folder`; returns name -> input path."""
  os.makedirs(folder, exist_ok=True)
  photos = list(tiles())
  datasets = {}

  path = os.path.join(folder, 'tensors.tfrecord')
  tfrecord.write_tfrecord(path, [example.build_example({
      'image': tensor_proto.serialize_tensor((pixels / 255.0).astype(np.float32)),
      'id': f'{name}-{i}', 'label': _CLASS_OF[name]})
      for i, (name, pixels) in enumerate(photos)])
  datasets['tensors'] = path

  path = os.path.join(folder, 'raw.tfrecord.gz')
  tfrecord.write_tfrecord(path, [example.build_example({
      'image/raw': pixels.tobytes(), 'image/shape': list(pixels.shape),
      'image/filename': f'{name}_{i}.jpg'})
      for i, (name, pixels) in enumerate(photos)], compression='gzip')
  datasets['raw'] = path

  encoded = os.path.join(folder, 'encoded')
  os.makedirs(encoded, exist_ok=True)
  for split, part in (('train', photos[::2]), ('test', photos[1::2])):
    tfrecord.write_tfrecord(
        os.path.join(encoded, f'demo-{split}.tfrecord-00000-of-00001'),
        [example.build_example({'image': _png(pixels), 'label': _CLASS_OF[name]})
         for name, pixels in part])
  with open(os.path.join(encoded, 'label.labels.txt'), 'w') as f:
    f.write('\n'.join(CLASSES) + '\n')
  datasets['encoded'] = encoded

  path = os.path.join(folder, 'batched.tfrecord')
  batches = [np.stack([p for _, p in photos[i:i + 4]]).transpose(0, 3, 1, 2)
             for i in range(0, len(photos) - 3, 4)]
  tfrecord.write_tfrecord(path, [example.build_example({
      'frames': tensor_proto.serialize_tensor(batch)}) for batch in batches])
  datasets['batched'] = path
  return datasets


EXPORTS = {
    'tensors': ['--name_template', '{id}.{ext}'],
    'raw': ['--format', 'jpeg', '--quality', '90', '--name_template',
            '{image/filename}'],
    'encoded': ['--layout', 'class', '--label_names', '{records}/encoded/label.labels.txt'],
    'batched': [],
}


def contact_sheet(outputs: List[str], path: str, per_export: int = 8) -> int:
  """Draws the first `per_export` images of each output root (manifest order) to `path`,
  each read back from its file; returns how many."""
  items = []
  for output in outputs:
    rows = list(itertools.islice(
        manifest.read_rows(root_files.OutputRoot(output)), per_export))
    for row in rows:
      with open(os.path.join(output, row['path']), 'rb') as f:
        pixels = report.decode_written(f.read())
      items.append((pixels, f'{os.path.basename(output)}/{row["path"]}'))
  preview.contact_sheet(items, columns=per_export).save(path)
  return len(items)


def main(argv: List[str] = None) -> int:
  parser = argparse.ArgumentParser(prog='unrecord demo', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--folder', default='demo_out', help='Where to put everything.')
  args = parser.parse_args(argv)
  started = time.time()
  records = os.path.join(args.folder, 'records')
  images = os.path.join(args.folder, 'images')
  shutil.rmtree(args.folder, ignore_errors=True)
  datasets = build_sample(records)
  print(f'unrecord demo: wrote sample TFRecords from {len(PHOTOS)} photographs to '
        f'{records}/', file=sys.stderr)
  totals = {}
  for name, input_path in datasets.items():
    extra = [a.replace('{records}', records) for a in EXPORTS[name]]
    output = os.path.join(images, name)
    status = export_images.main(['--input', input_path, '--output', output] + extra)
    if status != 0:
      print(f'unrecord demo: exporting {name} failed (exit {status})', file=sys.stderr)
      return status
    with open(os.path.join(output, '_report.json'), encoding='utf-8') as f:
      count = json.load(f)['written']
    totals[name] = (output, count)
  sheet = os.path.join(args.folder, 'contact_sheet.png')
  shown = contact_sheet([output for output, _ in totals.values()], sheet)
  print(f'\nunrecord demo: done in {time.time() - started:.0f} s. Images written:')
  for name, (output, count) in totals.items():
    print(f'  {count:4d}  {output}/  ({name})')
  print('Each folder also holds _manifest/ (its rows), _report.html, _report.json, '
        '_dead_letter.*, _SUCCESS and _logs/ (the run\'s Beam log).')
  print(f'Look at: {sheet} ({shown} of the written images, read back from their files), '
        f'then {os.path.join(images, "encoded", "_report.html")} (a run report).')
  return 0


if __name__ == '__main__':
  sys.exit(main())
