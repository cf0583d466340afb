"""What people use today to turn TFRecords into image files, and the floors under it.

Each system runs as its own process, the way a user runs it:

    python -m bench.peers SYSTEM --kind KIND --input PATTERN --output DIR --format png

Each peer is the best plain version of itself (the seeds' own scripts parsed with eager
TF ops, 5-10x slower per record than protobuf's parser, and their thread pool parsed
inside the threads, where the parse queues for the GIL):

  loop         tf.data reads, protobuf parses, NumPy scales, cv2.imwrite, one at a time
  threads      the main thread reads and parses; a ThreadPoolExecutor (Python's default
               worker count) scales, encodes and writes, with bounded work in flight
  tfdata       tf.data: parallel map of parse + tf.io.encode_png/jpeg + tf.io.write_file
  beam_naive   ReadFromTFRecord -> Map(protobuf parse) -> Map(cv2.imwrite) on the
               DirectRunner, multi_processing, one worker per core
  expert       what a skilled engineer writes by hand: one forked process per core, each
               reading whole shards, TFRecord framing with both CRCs checked by
               google-crc32c, protobuf's parser (message classes from TF's .proto
               files, no TensorFlow import), np.rint(np.clip(x, 0, 1) * 255),
               unrecord's encoders called directly (fpng; OpenCV for gray and JPEG),
               plain writes; no manifest, hash, temp+rename or dead letters
  floor_atomic passthrough's floor: the expert script writing each already-encoded
               payload atomically (temp file + rename), the guarantee unrecord keeps
  floor_opencv encode + file write of already-decoded uint8 arrays, one process per core,
               with OpenCV's encoder at its defaults (cv2.imwrite's work without the parse)
  floor_job    the same with the encoder and settings unrecord uses (transforms.pixels.encode)

Every system writes correct pixels: float [0,1] is scaled with rounding (x*255, rounded,
clipped), as unrecord does, so the outputs can be compared image for image. The last two
floors load their arrays before the clock starts and print the timed part as JSON on
stdout; they are context, not targets.
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
# Parsing


def _feature_spec(kind: str) -> dict:
  import tensorflow as tf
  if kind in ('raw_u8', 'gray_u8'):
    return {'image/raw': tf.io.FixedLenFeature([], tf.string),
            'image/shape': tf.io.FixedLenFeature([3], tf.int64)}
  return {'image': tf.io.FixedLenFeature([], tf.string)}


def to_uint8(image):
  """Float [0,1] -> uint8 with rounding, as unrecord writes it; other pixels as they are."""
  if isinstance(image, np.ndarray) and image.dtype == np.float32:
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
  return image


def proto_parser(kind: str, tensorflow: bool = True) -> Callable[[bytes], object]:
  """serialized tf.train.Example -> HWC pixels as stored (float32 or uint8), or the
  encoded bytes for 'jpeg', by the protobuf runtime's C parser, about 10x faster per
  record than eager TF ops. With TensorFlow's own message classes, or (`tensorflow=False`)
  the same messages built from TF's .proto files without importing TensorFlow, as a
  script with protoc-generated `example_pb2` does: the same parser, without the 3-9 s
  import."""
  if tensorflow:
    from tensorflow.core.example.example_pb2 import Example
    from tensorflow.core.framework.tensor_pb2 import TensorProto
  else:
    from transforms.records.protos import Example, TensorProto

  def features(raw):
    return Example.FromString(raw).features.feature

  if kind == 'tensor_f32':

    def parse(raw):
      tensor = TensorProto.FromString(features(raw)['image'].bytes_list.value[0])
      shape = [d.size for d in tensor.tensor_shape.dim]
      return np.frombuffer(tensor.tensor_content, np.float32).reshape(shape)
  elif kind in ('raw_u8', 'gray_u8'):

    def parse(raw):
      feature = features(raw)
      shape = feature['image/shape'].int64_list.value
      return np.frombuffer(feature['image/raw'].bytes_list.value[0],
                           np.uint8).reshape(shape)
  else:

    def parse(raw):
      return features(raw)['image'].bytes_list.value[0]
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
  """The best plain loop: tf.data reads, protobuf parses, NumPy scales, cv2.imwrite."""
  parse = proto_parser(args.kind)
  count = 0
  for stem, index, raw in _records(args.input):
    cv2_write(os.path.join(args.output, f'{stem}-{index}.{_ext(args.kind, args.format)}'),
              to_uint8(parse(raw)), args.format)
    count += 1
  return count


def run_threads(args) -> int:
  """The strongest fair thread pool: the main thread reads and parses (protobuf's parse
  holds the GIL, so threads would only queue for it); the pool scales, encodes and writes,
  which release it (NumPy's loops, cv2.imwrite, the file write). At most four images per
  thread are in flight, so memory stays bounded."""
  parse = proto_parser(args.kind)
  ext = _ext(args.kind, args.format)

  def work(stem, index, image):
    cv2_write(os.path.join(args.output, f'{stem}-{index}.{ext}'), to_uint8(image),
              args.format)

  with futures.ThreadPoolExecutor() as pool:
    in_flight = set()
    count = 0
    for stem, index, raw in _records(args.input):
      if len(in_flight) >= 4 * pool._max_workers:  # pylint: disable=protected-access
        done, in_flight = futures.wait(in_flight, return_when=futures.FIRST_COMPLETED)
        count += len([f.result() for f in done])  # result() raises a thread's error
      in_flight.add(pool.submit(work, stem, index, parse(raw)))
    return count + len([f.result() for f in futures.as_completed(in_flight)])


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


class _ProtoParse:
  """Map(parse): a callable so each worker builds its parser once."""

  def __init__(self, kind):
    self._kind = kind
    self._parse = None

  def __call__(self, raw):
    if self._parse is None:
      self._parse = proto_parser(self._kind)
    return to_uint8(self._parse(raw))


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
         | beam.Map(_ProtoParse(args.kind))
         | beam.Map(_write_with_uuid, args.output, args.kind, args.format))
  return len(os.listdir(args.output))


# ---------------------------------------------------------------------------------------
# The expert's script: what a skilled engineer writes by hand with the same libraries,
# with none of the product's guarantees (no manifest, no hash, no temp+rename, no dead
# letters): one forked process per core, each reading whole shards.


def _tfrecords(path: str):
  """(index, payload) of each record of one uncompressed TFRecord file, both CRCs
  checked with google-crc32c (the framing: u64 length, masked crc, payload, masked
  crc)."""
  import struct
  import google_crc32c

  def masked(data) -> int:
    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF

  with open(path, 'rb', buffering=1 << 20) as f:
    index = 0
    while True:
      header = f.read(12)
      if not header:
        return
      length, length_crc = struct.unpack('<QI', header)
      if masked(header[:8]) != length_crc:
        raise ValueError(f'{path}: record {index}: length CRC mismatch')
      payload = f.read(length)
      (payload_crc,) = struct.unpack('<I', f.read(4))
      if masked(payload) != payload_crc:
        raise ValueError(f'{path}: record {index}: payload CRC mismatch')
      yield index, payload
      index += 1


def expert_encoder(fmt: str) -> Callable:
  """The encoder unrecord picks for the same output, called directly: fpng for 8-bit RGB
  PNG, OpenCV for gray PNG, OpenCV JPEG q90 with 4:4:4 chroma (unrecord's choice from
  q90 up), so both write the same files."""
  import cv2
  import fpng
  cv2.setNumThreads(1)
  jpeg = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
          cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]

  def encode(image):
    if isinstance(image, bytes):
      return image
    if image.ndim == 3 and image.shape[2] == 1:
      image = image[:, :, 0]
    if fmt == 'png' and image.ndim == 3:
      return fpng.from_ndarray(image)
    if image.ndim == 3:
      image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode('.png' if fmt == 'png' else '.jpg', image,
                            jpeg if fmt == 'jpeg' else [])
    if not ok:
      raise OSError('cv2.imencode failed')
    return data
  return encode


def _plain_write(path: str, data) -> None:
  with open(path, 'wb') as f:
    f.write(data)


def _atomic_write(path: str, data) -> None:
  """What unrecord guarantees of every file: a temp file beside it, renamed into place."""
  temp = f'{path}.{os.getpid()}.tmp'
  with open(temp, 'wb') as f:
    f.write(data)
  os.rename(temp, path)


def _shard_worker(files, parse, encode, write, output, ext):
  for path in files:
    stem = os.path.basename(path).replace('.', '_')
    for index, raw in _tfrecords(path):
      write(os.path.join(output, f'{stem}-{index}.{ext}'), encode(to_uint8(parse(raw))))


def run_by_shard(args) -> dict:
  """One forked process per core, each taking every n-th file: `expert` writes plainly,
  `floor_atomic` (passthrough's floor) writes each file atomically. The timed part is
  from the first fork to the last worker's exit: its rate is the script's steady rate,
  without the start-up, whose run-to-run noise would swamp a marginal rate over a few
  seconds of work."""
  files = sorted(glob.glob(args.input))
  # Imported once, before the fork, as a script's top-level imports are.
  parse, encode = proto_parser(args.kind, tensorflow=False), expert_encoder(args.format)
  write = _atomic_write if args.system == 'floor_atomic' else _plain_write
  context = multiprocessing.get_context('fork')
  workers = [context.Process(target=_shard_worker,
                             args=(files[i::args.workers], parse, encode, write,
                                   args.output, _ext(args.kind, args.format)))
             for i in range(min(args.workers, len(files)))]
  start = time.perf_counter()
  for worker in workers:
    worker.start()
  for worker in workers:
    worker.join()
    if worker.exitcode:
      raise SystemExit(f'{args.system} worker failed with exit code {worker.exitcode}')
  return {'images': len(os.listdir(args.output)),
          'timed_seconds': time.perf_counter() - start}


# ---------------------------------------------------------------------------------------
# Floors: the clock covers encode + write only, one process per core


def _load(args) -> List[Tuple[str, object]]:
  """The dataset's images (or JPEG payloads) as the expert's script reads them, in
  memory before the clock starts."""
  parse = proto_parser(args.kind, tensorflow=False)
  images = (to_uint8(parse(raw)) for path in sorted(glob.glob(args.input))
            for _, raw in _tfrecords(path))
  return [(f'{i:07d}', image) for i, image in enumerate(images)]


def _encoder(system: str, kind: str, fmt: str) -> Callable:
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
  from transforms.pixels import encode
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
           'beam_naive': run_beam_naive, 'expert': run_by_shard,
           'floor_atomic': run_by_shard, 'floor_opencv': run_floor, 'floor_job': run_floor}


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
