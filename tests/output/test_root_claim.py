"""The output root's lock: an flock on local disk, a lease on S3 (a real moto server)."""

import json
import os
import subprocess
import sys
import time

import pytest
import s3fs

from tests import emulators
from tests import fixtures
from tests.conftest import REPO
from transforms import errors
from transforms.output import root_claim
from transforms.output import root_files


def test_a_local_lock_is_refused_while_held_and_free_once_released(tmp_path):
  root = root_files.OutputRoot(str(tmp_path / 'out'))
  first = root_claim.claim(root)
  with pytest.raises(errors.RootBusyError, match=f'pid {os.getpid()}'):
    root_claim.claim(root_files.OutputRoot(str(tmp_path / 'out')))
  first.release()
  assert not (tmp_path / 'out' / root_claim.LOCK).exists()
  root_claim.claim(root).release()


@pytest.fixture(scope='module')
def s3_url():
  with emulators.s3_server() as url:
    yield url


@pytest.fixture
def s3_root(s3_url, monkeypatch, request):
  for key, value in emulators.s3_env(s3_url).items():
    monkeypatch.setenv(key, value)
  fs = s3fs.S3FileSystem(key=emulators.S3_KEY, secret=emulators.S3_SECRET,
                         client_kwargs={'endpoint_url': s3_url}, skip_instance_cache=True)
  bucket = request.node.name.replace('_', '-')[:40].strip('-').lower()
  fs.mkdir(bucket)
  return fs, f's3://{bucket}/images', {'s3': {
      'key': emulators.S3_KEY, 'secret': emulators.S3_SECRET,
      'client_kwargs': {'endpoint_url': s3_url}, 'skip_instance_cache': True}}


def _holder(fs, url):
  fs.invalidate_cache()
  return json.loads(fs.cat_file(url.replace('s3://', '') + '/' + root_claim.LOCK))


def test_an_s3_lease_is_refused_while_live_and_taken_over_once_expired(s3_root):
  fs, url, options = s3_root
  # The lease is long enough that a slow machine still asks while it is live; the
  # test then waits until the expiry written in the lease object, not a guessed time.
  first = root_claim.claim(root_files.OutputRoot(url, options), lease_seconds=4)
  first._stop.set()  # the holder dies: nobody renews its lease any more
  with pytest.raises(errors.RootBusyError, match='its lease ends at'):
    root_claim.claim(root_files.OutputRoot(url, options))
  time.sleep(max(0.0, _holder(fs, url)['expires'] - time.time()) + 0.2)
  second = root_claim.claim(root_files.OutputRoot(url, options))
  assert _holder(fs, url)['run_id'] == second.run_id != first.run_id
  first.release()  # a late release of the dead holder leaves the new lease alone
  assert _holder(fs, url)['run_id'] == second.run_id
  second.release()
  fs.invalidate_cache()
  assert not fs.exists(url.replace('s3://', '') + '/' + root_claim.LOCK)


def test_the_job_refuses_an_s3_root_whose_lease_is_live_then_runs_and_releases(s3_root,
                                                                             tmp_path):
  fs, url, options = s3_root
  src = tmp_path / 'src'
  fixtures.write_tfrecord(str(src / 'a.tfrecord'), [fixtures.example({
      'image': fixtures.bytes_feature(fixtures.serialized_tensor(fixtures.photo(i, 16, 16)))})
      for i in range(3)])
  holder = root_claim.claim(root_files.OutputRoot(url, options))
  env = dict(os.environ)

  def export():
    return subprocess.run([sys.executable, '-m', 'beam_jobs.cli', 'export', '--input',
                           str(src), '--output', url], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)

  refused = export()
  assert refused.returncode == 2, refused.stderr[-3000:]
  assert 'another unrecord run is writing to' in refused.stderr
  assert f'pid {os.getpid()}' in refused.stderr and 'Traceback' not in refused.stderr
  holder.release()
  done = export()
  assert done.returncode == 0, done.stderr[-3000:]
  fs.invalidate_cache()
  listed = {p.rsplit('/', 1)[1] for p in fs.find(url.replace('s3://', ''))}
  assert root_claim.LOCK not in listed and '_SUCCESS' in listed
  assert {n for n in listed if n.endswith('.png')} == {f'a-{i:06d}.png' for i in range(3)}
