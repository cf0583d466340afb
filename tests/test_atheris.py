"""A short coverage-guided fuzz run (atheris) over read -> decode -> normalize -> encode."""

import os
import subprocess
import sys

from tests import fixtures
from tests.conftest import REPO
from transforms.inputs import tfrecord

TARGET = os.path.join(REPO, 'tests', 'fuzz', 'fuzz_pipeline.py')
RUNS = 30000


def test_short_atheris_run_finds_nothing(tmp_path):
  corpus = tmp_path / 'corpus'
  corpus.mkdir()
  photo = fixtures.photo(0, 8, 8)
  seeds = {
      'tensor': fixtures.example({'image': fixtures.bytes_feature(
          fixtures.serialized_tensor(photo))}),
      'raw': fixtures.example({'image/raw': fixtures.bytes_feature(photo.tobytes()),
                               'image/shape': fixtures.int64_feature(8, 8, 3)}),
      'png': fixtures.example({'image': fixtures.bytes_feature(fixtures.encode_png(photo))}),
      'list': fixtures.example({'image': fixtures.int64_feature(*photo[:, :, 0].ravel())}),
  }
  for name, payload in seeds.items():
    (corpus / name).write_bytes(tfrecord.encode_record(payload))
  result = subprocess.run(
      [sys.executable, TARGET, f'-atheris_runs={RUNS}', '-rss_limit_mb=2048',
       str(corpus)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
  output = result.stdout + result.stderr
  assert result.returncode == 0, output[-4000:]
  assert f'Done {RUNS} in' in output
  assert not list(tmp_path.glob('crash-*'))
