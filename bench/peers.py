"""What people use today to turn TFRecords into image files, and the floor under all of it.

Each system runs as its own process, the way a user runs it:

    python -m bench.peers SYSTEM --kind KIND --input PATTERN --output DIR --format png

  loop         the seed's sequential loop: TF parse, then cv2.imwrite, one image at a time
  threads      the same work in a ThreadPoolExecutor (Python's default worker count)
  tfdata       tf.data: parallel map of parse + tf.io.encode_png/jpeg + tf.io.write_file
  beam_naive   ReadFromTFRecord -> Map(TF parse) -> Map(cv2.imwrite) on the DirectRunner,
               multi_processing, one worker per core
  floor_opencv encode + file write of already-decoded uint8 arrays, one process per core,
               with OpenCV's encoder at its defaults (cv2.imwrite's work without the parse)
  floor_job    the same with the encoder and settings unrecord uses (transforms.encode)
  floor_copy   write the already-encoded payloads to files (the passthrough floor)

Every system writes correct pixels: float [0,1] is scaled with rounding (x*255, rounded,
clipped), as unrecord does, so the outputs can be compared image for image. The floors
load their arrays before the clock starts and print the timed part as JSON on stdout.
"""

from __future__ import annotations

import argparse
import glob
import json
import multiprocessing
import os
import sys
import time
import uuid
from concurrent import futures
from typing import Callable, List, Tuple

import numpy as np

KINDS = ('tensor_f32', 'raw_u8', 'gray_u8', 'jpeg')
JPEG_QUALITY = 90


# ---------------------------------------------------------------------------------------
# TensorFlow parsing, as the seed scripts do it


def _feature_spec(kind: str) -> dict:
  import tensorflow as tf
  if kind in ('raw_u8', 'gray_u8'):
    return {'image/raw': tf.io.FixedLenFeature([], tf.string),
            'image/shape': tf.io.FixedLenFeature([3], tf.int64)}
  return {'image': tf.io.FixedLenFeature([], tf.string)}


def tf_parser(kind: str) -> Callable[[bytes], np.ndarray]:
  """serialized tf.train.Example -> HWC uint8 (or the encoded bytes for 'jpeg'), eagerly,
  scaling floats with NumPy as the seed loop does."""
  import tensorflow as tf
  spec = _feature_spec(kind)
  if kind == 'tensor_f32':

    def parse(raw):
      tensor = tf.io.parse_tensor(tf.io.parse_single_example(raw, spec)['image'],
                                  tf.float32).numpy()
      return np.clip(np.rint(tensor * 255), 0, 255).astype(np.uint8)
  elif kind in ('raw_u8', 'gray_u8'):

    def parse(raw):
      features = tf.io.parse_single_example(raw, spec)
      pixels = tf.io.decode_raw(features['image/raw'], tf.uint8)
      return tf.reshape(pixels, features['image/shape']).numpy()
  else:

    def parse(raw):
      return tf.io.parse_single_example(raw, spec)['image'].numpy()
  return parse


def tf_graph_parser(kind: str) -> Callable:
  """The same parse as TensorFlow ops only, for tf.data's map (tf.round rounds half to
  even, like np.rint)."""
  import tensorflow as tf
  spec = _feature_spec(kind)

  def parse(raw):
    features = tf.io.parse_single_example(raw, spec)
    if kind == 'jpeg':
      return features['image']
    if kind == 'tensor_f32':
      tensor = tf.ensure_shape(tf.io.parse_tensor(features['image'], tf.float32),
                               [None, None, 3])
      return tf.cast(tf.clip_by_value(tf.round(tensor * 255), 0, 255), tf.uint8)
    return tf.reshape(tf.io.decode_raw(features['image/raw'], tf.uint8),
                      features['image/shape'])
  return parse


def cv2_write(path: str, image, fmt: str) -> None:
  """cv2.imwrite with the channel swap OpenCV needs; encoded bytes are written as is."""
  import cv2
  if isinstance(image, bytes):
    with open(path, 'wb') as f:
      f.write(image)
    return
  if image.ndim == 3 and image.shape[2] == 3:
    image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
  params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if fmt == 'jpeg' else []
  if not cv2.imwrite(path, image, params):
    raise OSError(f'cv2.imwrite failed for {path}')


def _ext(kind: str, fmt: str) -> str:
  return 'jpg' if kind == 'jpeg' or fmt == 'jpeg' else fmt


def _records(pattern: str):
  import tensorflow as tf
  for path in sorted(glob.glob(pattern)):
    stem = os.path.basename(path).replace('.', '_')
    for index, raw in enumerate(tf.data.TFRecordDataset(path)):
      yield stem, index, raw.numpy()


# ---------------------------------------------------------------------------------------
# Peers


def run_loop(args) -> int:
  parse = tf_parser(args.kind)
  count = 0
  for stem, index, raw in _records(args.input):
    cv2_write(os.path.join(args.output, f'{stem}-{index}.{_ext(args.kind, args.format)}'),
              parse(raw), args.format)
    count += 1
  return count


def run_threads(args) -> int:
  parse = tf_parser(args.kind)

  def work(item):
    stem, index, raw = item
    cv2_write(os.path.join(args.output, f'{stem}-{index}.{_ext(args.kind, args.format)}'),
              parse(raw), args.format)

  with futures.ThreadPoolExecutor() as pool:
    return sum(1 for _ in pool.map(work, _records(args.input)))


def run_tfdata(args) -> int:
  import tensorflow as tf
  files = sorted(glob.glob(args.input))
  ext = _ext(args.kind, args.format)
  output = args.output.rstrip('/') + '/'
  parse = tf_graph_parser(args.kind)

  def convert(index, raw):
    encoded = parse(raw)
    if args.kind != 'jpeg':
      if args.format == 'jpeg':
        encoded = tf.io.encode_jpeg(encoded, quality=JPEG_QUALITY)
      else:
        encoded = tf.io.encode_png(encoded)
    path = tf.strings.join([output, tf.strings.as_string(index), '.', ext])
    tf.io.write_file(path, encoded)
    return index

  dataset = (tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)
             .enumerate()
             .map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False))
  return sum(1 for _ in dataset)


class _TfParse:
  """Map(TF parse): a callable so each worker builds its parser once."""

  def __init__(self, kind):
    self._kind = kind
    self._parse = None

  def __call__(self, raw):
    if self._parse is None:
      self._parse = tf_parser(self._kind)
    return self._parse(raw)


def _write_with_uuid(image, output, kind, fmt):
  cv2_write(os.path.join(output, f'{uuid.uuid4().hex}.{_ext(kind, fmt)}'), image, fmt)


def run_beam_naive(args) -> int:
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions
  options = PipelineOptions([
      '--runner=DirectRunner', '--direct_running_mode=multi_processing',
      f'--direct_num_workers={args.workers}'])
  with beam.Pipeline(options=options) as pipeline:
    _ = (pipeline
         | beam.io.ReadFromTFRecord(args.input)
         | beam.Map(_TfParse(args.kind))
         | beam.Map(_write_with_uuid, args.output, args.kind, args.format))
  return len(os.listdir(args.output))


# ---------------------------------------------------------------------------------------
# Floors: the clock covers encode + write only, one process per core


def _load(args) -> List[Tuple[str, object]]:
  """The dataset's images (or JPEG payloads), parsed by tf.data in parallel."""
  import tensorflow as tf
  parse = tf_graph_parser(args.kind)
  dataset = tf.data.TFRecordDataset(sorted(glob.glob(args.input))).map(
      parse, num_parallel_calls=tf.data.AUTOTUNE)
  return [(f'{i:07d}', value) for i, value in enumerate(dataset.as_numpy_iterator())]


def _encoder(system: str, kind: str, fmt: str) -> Callable:
  if system == 'floor_copy':
    return lambda image: image
  if system == 'floor_opencv':
    import cv2
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if fmt == 'jpeg' else []

    def encode_opencv(image):
      if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
      ok, data = cv2.imencode('.' + fmt, image, params)
      if not ok:
        raise OSError('cv2.imencode failed')
      return data
    return encode_opencv
  from transforms import encode
  spec = encode.EncodeSpec(format=fmt, quality=JPEG_QUALITY)
  return lambda image: encode.encode(image, spec)


def _floor_worker(system, kind, fmt, items, output, barrier, done):
  encode = _encoder(system, kind, fmt)
  ext = _ext(kind, fmt)
  barrier.wait()
  for name, image in items:
    with open(os.path.join(output, f'{name}.{ext}'), 'wb') as f:
      f.write(encode(image))
  done.put(time.perf_counter())


def run_floor(args) -> dict:
  items = _load(args)
  context = multiprocessing.get_context('fork')
  barrier = context.Barrier(args.workers + 1)
  done = context.Queue()
  workers = [context.Process(target=_floor_worker,
                             args=(args.system, args.kind, args.format,
                                   items[i::args.workers], args.output, barrier, done))
             for i in range(args.workers)]
  for worker in workers:
    worker.start()
  barrier.wait()
  start = time.perf_counter()
  finished = [done.get() for _ in workers]
  for worker in workers:
    worker.join()
    if worker.exitcode:
      raise SystemExit(f'floor worker failed with exit code {worker.exitcode}')
  return {'images': len(items), 'timed_seconds': max(finished) - start}


SYSTEMS = {'loop': run_loop, 'threads': run_threads, 'tfdata': run_tfdata,
           'beam_naive': run_beam_naive, 'floor_opencv': run_floor, 'floor_job': run_floor,
           'floor_copy': run_floor}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('system', choices=sorted(SYSTEMS))
  parser.add_argument('--kind', choices=KINDS, required=True)
  parser.add_argument('--input', required=True, help='glob of TFRecord files')
  parser.add_argument('--output', required=True)
  parser.add_argument('--format', choices=('png', 'jpeg'), default='png')
  parser.add_argument('--workers', type=int, default=os.cpu_count() or 1)
  args = parser.parse_args(argv)
  os.makedirs(args.output, exist_ok=True)
  result = SYSTEMS[args.system](args)
  if not isinstance(result, dict):
    result = {'images': result}
  json.dump(result, sys.stdout)
  print()
  return 0


if __name__ == '__main__':
  sys.exit(main())
