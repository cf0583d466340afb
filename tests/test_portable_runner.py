"""The same job on Beam's portable runner (the protocol Flink's job server speaks).

`--job_endpoint embed` runs the portable job service in-process, so no job-server jar is
needed; the SDK workers are LOOPBACK (in the launcher) or EXTERNAL (a worker pool the test
starts, as the Flink TaskManager sidecar does in deploy/flink/).
"""

import os
import shlex

import cv2
import numpy as np
import pytest

from tests import emulators
from tests import fixtures
from tests import outputs
from tests.conftest import REPO

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


def _worker_pool_block():
  """docs/runners.md's worker-pool lines: the pool's command and the export's words."""
  text = open(os.path.join(REPO, 'docs', 'runners.md'), encoding='utf-8').read()
  block = text.split('Or with a worker pool', 1)[1].split('```sh\n', 1)[1].split('```', 1)[0]
  lines = block.replace('\\\n', ' ').splitlines()
  (export,) = [l for l in lines if l.startswith('unrecord export ')]
  return lines[0], shlex.split(export)


def test_portable_runner_with_an_external_worker_pool(unrecord, source, tmp_path):
  """docs/runners.md's worker-pool lines as written: emulators.worker_pool starts the
  pool the page starts (on a free port rather than 50000, stopped by its pid), and the
  page's export line runs on it, on this test's records."""
  pool, words = _worker_pool_block()
  assert pool == ('python -m apache_beam.runners.worker.worker_pool_main '
                  '--service_port=50000 &'), pool
  with emulators.worker_pool() as (_, address):
    out = str(tmp_path / 'external')
    args = [source if w == words[words.index('--input') + 1] else
            out if w == words[words.index('--output') + 1] else
            address if w == 'localhost:50000' else w for w in words[1:]]
    assert args[args.index('--environment_config') + 1] == address
    result = unrecord(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    _check(out)
