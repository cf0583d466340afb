"""The same job on Beam's portable runner (the protocol Flink's job server speaks).

`--job_endpoint embed` runs the portable job service in-process, so no job-server jar is
needed; the SDK workers are LOOPBACK (in the launcher) or EXTERNAL (a worker pool the test
starts, as the Flink TaskManager sidecar does in deploy/flink/).
"""

import os

import cv2
import numpy as np
import pytest

from tests import emulators
from tests import fixtures
from tests import outputs

PHOTOS = [fixtures.photo(i, 16, 16) for i in range(6)]


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  folder = tmp_path_factory.mktemp('portable')
  return fixtures.write_tfrecord(str(folder / 'p.tfrecord'), [fixtures.example({
      'image': fixtures.bytes_feature(fixtures.serialized_tensor(p))}) for p in PHOTOS])


def _check(out):
  rows = outputs.manifest_rows(out)
  assert len(rows) == len(PHOTOS) and os.path.exists(os.path.join(out, '_SUCCESS'))
  for row in rows:
    pixels = cv2.cvtColor(cv2.imread(os.path.join(out, row['path'])), cv2.COLOR_BGR2RGB)
    assert np.array_equal(pixels, PHOTOS[row['index']])


def test_portable_runner_with_loopback_workers(unrecord, source, tmp_path):
  out = str(tmp_path / 'loopback')
  result = unrecord('export', '--input', source, '--output', out, '--runner',
                    'PortableRunner', '--job_endpoint', 'embed', '--environment_type',
                    'LOOPBACK')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'runner PortableRunner' in result.stderr and 'written 6' in result.stderr
  _check(out)


def test_portable_runner_works_behind_an_http_proxy(unrecord, source, tmp_path):
  """gRPC honours http_proxy; the runner's own localhost traffic must not go there."""
  out = str(tmp_path / 'proxied')
  dead_proxy = 'http://127.0.0.1:9'
  result = unrecord('export', '--input', source, '--output', out, '--runner',
                    'PortableRunner', '--job_endpoint', 'embed', '--environment_type',
                    'LOOPBACK', env={'http_proxy': dead_proxy, 'https_proxy': dead_proxy,
                                     'HTTP_PROXY': dead_proxy, 'HTTPS_PROXY': dead_proxy})
  assert result.returncode == 0, result.stderr[-3000:]
  _check(out)


def test_portable_runner_with_an_external_worker_pool(unrecord, source, tmp_path):
  with emulators.worker_pool() as (_, address):
    out = str(tmp_path / 'external')
    result = unrecord('export', '--input', source, '--output', out, '--runner',
                      'PortableRunner', '--job_endpoint', 'embed', '--environment_type',
                      'EXTERNAL', '--environment_config', address)
    assert result.returncode == 0, result.stderr[-3000:]
    _check(out)
