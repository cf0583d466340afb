"""Bombs are rejected before any large allocation: the worker's memory barely rises.

The job runs as a subprocess with one in-process worker, so the process's peak RSS is
the worker's. It runs twice, on benign input and on the same input plus the bombs; the
difference of the two peaks is the memory the bombs cost.
"""

import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib


from tests import fixtures
from tests.conftest import REPO
from transforms.inputs import tfrecord
from transforms.records import protos

# VmHWM, not ru_maxrss: ru_maxrss survives execve, so a child started from the (large)
# test process would report the parent's peak.
_MEASURE = textwrap.dedent('''
    import sys
    from beam_jobs import export_images
    status = export_images.main(sys.argv[1:])
    with open('/proc/self/status') as f:
      peak_kib = next(int(l.split()[1]) for l in f if l.startswith('VmHWM:'))
    print('PEAK_KIB', peak_kib, 'STATUS', status)
''')


def _good(i):
  return fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(
      fixtures.photo(i, 32, 32)))})


def _length_bomb() -> bytes:
  """A frame header whose length CRC is valid and whose length is 2^36."""
  length = struct.pack('<Q', 1 << 36)
  return length + struct.pack('<I', tfrecord.masked_crc(length)) + b'\x00' * 64


def _tensor_bomb() -> bytes:
  """A TensorProto that claims 10^12 elements (one value, broadcast)."""
  tensor = protos.TensorProto(dtype=1, float_val=[0.5])
  for size in (10 ** 6, 10 ** 6):
    tensor.tensor_shape.dim.add(size=size)
  return fixtures.example({'image': fixtures.bytes_feature(tensor.SerializeToString())})


def _png_bomb() -> bytes:
  """A PNG whose header claims 65535 x 65535 pixels."""
  ihdr = struct.pack('>IIBBBBB', 65535, 65535, 8, 2, 0, 0, 0)
  chunk = b'IHDR' + ihdr
  idat = zlib.compress(b'\x00' * 1000)
  png = (b'\x89PNG\r\n\x1a\n' + struct.pack('>I', len(ihdr)) + chunk +
         struct.pack('>I', zlib.crc32(chunk)) + struct.pack('>I', len(idat)) + b'IDAT' +
         idat + struct.pack('>I', zlib.crc32(b'IDAT' + idat)))
  return fixtures.example({'image': fixtures.bytes_feature(png)})


def _lying_jpeg() -> bytes:
  """A real 64x64 JPEG whose frame header is patched to claim 8000 x 8000 pixels."""
  jpeg = bytearray(fixtures.encode_jpeg(fixtures.photo(0, 64, 64)))
  sof = jpeg.index(b'\xff\xc0')
  jpeg[sof + 5:sof + 9] = struct.pack('>HH', 8000, 8000)
  return fixtures.example({'image': fixtures.bytes_feature(bytes(jpeg))})


def _run(path, out):
  result = subprocess.run(
      [sys.executable, '-c', _MEASURE, '--input', path, '--output', out,
       '--direct_num_workers', '1', '--direct_running_mode', 'in_memory',
       '--max_failures', '10'],
      capture_output=True, text=True, cwd=REPO, timeout=600)
  line = next(l for l in result.stdout.splitlines() if l.startswith('PEAK_KIB'))
  _, peak, _, status = line.split()
  return int(peak), int(status), result


def test_bombs_are_rejected_and_cost_under_64_mib(tmp_path):
  goods = [_good(i) for i in range(4)]
  benign = fixtures.write_tfrecord(str(tmp_path / 'benign.tfrecord'), goods)
  frames = [tfrecord.encode_record(p) for p in goods[:2]]
  frames += [_length_bomb()]
  frames += [tfrecord.encode_record(p) for p in (_tensor_bomb(), _png_bomb(), _lying_jpeg())]
  frames += [tfrecord.encode_record(p) for p in goods[2:]]
  bombs = str(tmp_path / 'bombs.tfrecord')
  open(bombs, 'wb').write(b''.join(frames))

  base_peak, status, _ = _run(benign, str(tmp_path / 'out_benign'))
  assert status == 0
  bomb_peak, status, result = _run(bombs, str(tmp_path / 'out_bombs'))
  assert status == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in open(tmp_path / 'out_bombs' / '_dead_letter.jsonl')]
  assert sorted(r['reason'] for r in rows) == [
      'decode_error', 'record_too_large', 'too_many_pixels', 'too_many_pixels']
  assert len([n for n in os.listdir(tmp_path / 'out_bombs') if n.endswith('.png')]) == 4
  rise_mib = (bomb_peak - base_peak) / 1024
  print(f'bombs: peak RSS {bomb_peak / 1024:.1f} MiB vs benign {base_peak / 1024:.1f} MiB, '
        f'rise {rise_mib:.1f} MiB')
  assert rise_mib < 64
