"""The job against real object-store servers on 127.0.0.1: S3 (moto) and GCS (emulator)."""

import hashlib
import json
import time

import cv2
import gcsfs
import numpy as np
import pytest

from tests import emulators
from tests import fixtures

PHOTOS = [fixtures.photo(i, 24, 20) for i in range(6)]


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
  folder = tmp_path_factory.mktemp('cloud_shards')
  for shard in range(2):
    fixtures.write_tfrecord(str(folder / f'part-{shard}.tfrecord'), [
        fixtures.example({
            'image': fixtures.bytes_feature(fixtures.serialized_tensor(
                (PHOTOS[shard * 3 + i] / 255.0).astype(np.float32))),
            'id': fixtures.bytes_feature(f's{shard}i{i}'.encode())})
        for i in range(3)])
  return folder


@pytest.fixture(scope='module')
def servers():
  with emulators.s3_server() as s3, emulators.gcs_server() as gcs:
    yield s3, gcs




def _gcs(host, monkeypatch):
  for key, value in emulators.gcs_env(host).items():
    monkeypatch.setenv(key, value)
  return gcsfs.GCSFileSystem(token='anon', skip_instance_cache=True)


def _check_output(fs, root, secret=None):
  """Every object is what the manifest says (size, sha256) and decodes to its photo."""
  rows = [json.loads(line) for line in
          fs.cat_file(f'{root}/_manifest/part-00000-of-00001.jsonl').splitlines()]
  assert len(rows) == len(PHOTOS)
  listed = {p.split(f'{root}/', 1)[1] for p in fs.find(root)}
  logs = {p for p in listed if p.startswith('_logs/')}
  assert len(logs) == 1 and list(logs)[0].endswith('.log')  # the run's log, uploaded
  assert listed - logs == {r['path'] for r in rows} | {
      '_manifest/part-00000-of-00001.jsonl', '_manifest/_parts.json', '_dead_letter.jsonl',
      '_dead_letter.tfrecord', '_report.json',
      '_report.html', '_SUCCESS', '_unrecord_run.json'}
  for row in rows:
    data = fs.cat_file(f'{root}/{row["path"]}')
    assert (len(data), hashlib.sha256(data).hexdigest()) == (row['bytes'], row['sha256'])
    shard, index = int(row['id'][1]), int(row['id'][3])
    pixels = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), 1), cv2.COLOR_BGR2RGB)
    assert np.array_equal(pixels, PHOTOS[shard * 3 + index])
  if secret:
    for path in fs.find(root):
      assert secret.encode() not in fs.cat_file(path), path


def test_s3_to_gcs_with_storage_options(unrecord, shards, servers, monkeypatch):
  s3_url, gcs_url = servers
  s3 = emulators.s3_client(s3_url)
  s3.mkdir('in-bucket')
  s3.put(str(shards) + '/', 'in-bucket/data/', recursive=True)
  gcs = _gcs(gcs_url, monkeypatch)
  gcs.mkdir('out-bucket')
  options = json.dumps({'s3': {'key': emulators.S3_KEY, 'secret': emulators.S3_SECRET,
                               'client_kwargs': {'endpoint_url': s3_url}}})
  result = unrecord('export', '--input', 's3://in-bucket/data/*.tfrecord', '--output',
                    'gs://out-bucket/images', '--name_template', '{id}.{ext}',
                    '--storage_options', options, env=emulators.gcs_env(gcs_url))
  assert result.returncode == 0, result.stderr[-3000:]
  _check_output(gcs, 'out-bucket/images', secret=emulators.S3_SECRET)
  assert emulators.S3_SECRET not in result.stdout + result.stderr


def test_gcs_to_s3_with_fsspec_environment_configuration(unrecord, shards, servers,
                                                         monkeypatch):
  s3_url, gcs_url = servers
  gcs = _gcs(gcs_url, monkeypatch)
  gcs.mkdir('src-bucket')
  gcs.put(str(shards) + '/', 'src-bucket/data/', recursive=True)
  s3 = emulators.s3_client(s3_url)
  s3.mkdir('dst-bucket')
  env = {**emulators.gcs_env(gcs_url), **emulators.s3_env(s3_url)}
  result = unrecord('export', '--input', 'gs://src-bucket/data', '--output',
                    's3://dst-bucket/images', '--name_template', '{id}.{ext}', env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  _check_output(s3, 'dst-bucket/images', secret=emulators.S3_SECRET)
  assert emulators.S3_SECRET not in result.stdout + result.stderr


def test_transient_faults_are_retried_and_nothing_is_lost_or_doubled(unrecord, shards,
                                                                     servers):
  s3_url, _ = servers
  s3 = emulators.s3_client(s3_url)
  s3.mkdir('flaky-bucket')
  with emulators.FaultyProxy(s3_url, 'flaky') as proxy:
    result = unrecord('export', '--input', str(shards), '--output',
                      's3://flaky-bucket/images', '--name_template', '{id}.{ext}',
                      env=emulators.s3_env(proxy.url))
  assert result.returncode == 0, result.stderr[-3000:]
  assert proxy.faults >= 5, proxy.faults
  _check_output(s3, 'flaky-bucket/images')


def test_missing_bucket_fails_fast_and_clearly(unrecord, shards, servers):
  s3_url, _ = servers
  started = time.time()
  result = unrecord('export', '--input', str(shards), '--output', 's3://no-such-bucket/x',
                    env=emulators.s3_env(s3_url))
  assert result.returncode == 2
  assert time.time() - started < 30
  assert "the output 's3://no-such-bucket/x' cannot be written" in result.stderr
  assert 'NoSuchBucket' in result.stderr or 'does not exist' in result.stderr
  assert emulators.S3_SECRET not in result.stderr


def test_access_denied_fails_fast_and_leaves_nothing(unrecord, shards, servers):
  s3_url, _ = servers
  s3 = emulators.s3_client(s3_url)
  s3.mkdir('locked-bucket')
  started = time.time()
  with emulators.FaultyProxy(s3_url, 'deny') as proxy:
    result = unrecord('export', '--input', str(shards), '--output',
                      's3://locked-bucket/images', env=emulators.s3_env(proxy.url))
  assert result.returncode == 2
  assert time.time() - started < 60
  assert "'s3://locked-bucket/images' cannot be written" in result.stderr
  assert 'PermissionError' in result.stderr
  assert s3.find('locked-bucket') == []


def test_tar_shards_on_gcs_read_back_with_webdataset(unrecord, shards, servers, tmp_path,
                                                     monkeypatch):
  """--pack tar to gs://: whole shards uploaded (no temp object left), read back with
  `webdataset` from a download, pixel-exact against the file output of the same input;
  `unrecord verify` and `unrecord inspect` read the shards on the store."""
  _, gcs_url = servers
  gcs = _gcs(gcs_url, monkeypatch)
  gcs.mkdir('tar-bucket')
  env = emulators.gcs_env(gcs_url)
  files = tmp_path / 'files'
  for output, extra in ((str(files), ()), ('gs://tar-bucket/tars',
                                            ('--pack', 'tar', '--shard_samples', '2'))):
    result = unrecord('export', '--input', str(shards), '--output', output,
                      '--name_template', '{stem}-{index}.{ext}', *extra, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
  listed = {p.split('tars/', 1)[1] for p in gcs.find('tar-bucket/tars')}
  tars = sorted(p for p in listed if p.endswith('.tar'))
  assert tars == [f'part-{s}-{k:06d}.tar' for s in range(2) for k in range(2)]
  assert {'_SUCCESS', 'shardindex.json'} <= listed
  assert not [p for p in listed if 'unrecord-tmp' in p]
  index = json.loads(gcs.cat_file('tar-bucket/tars/shardindex.json'))
  assert [(e['url'], e['nsamples']) for e in index['shardlist']] == [
      (t, 2 if t.endswith('0.tar') else 1) for t in tars]

  for name in tars:
    gcs.get_file(f'tar-bucket/tars/{name}', str(tmp_path / name))
  import webdataset as wds
  samples = list(wds.WebDataset([str(tmp_path / t) for t in tars], shardshuffle=False))
  assert [s['__key__'] for s in samples] == [f'part-{s}-{i}' for s in range(2)
                                             for i in range(3)]
  for sample in samples:
    shard, index = int(sample['__key__'][5]), int(sample['__key__'][7])
    pixels = cv2.cvtColor(cv2.imdecode(np.frombuffer(sample['png'], np.uint8), 1),
                          cv2.COLOR_BGR2RGB)
    reference = cv2.cvtColor(cv2.imread(str(files / f'{sample["__key__"]}.png')),
                             cv2.COLOR_BGR2RGB)
    assert np.array_equal(pixels, reference)
    assert np.array_equal(pixels, PHOTOS[shard * 3 + index])
    assert json.loads(sample['json'])['id'] == f's{shard}i{index}'

  checked = unrecord('verify', 'gs://tar-bucket/tars', '--json', '--quiet', env=env)
  assert checked.returncode == 0, checked.stdout + checked.stderr
  summary = json.loads(checked.stdout)
  assert (summary['shards_checked'], summary['members_checked']) == (4, 6)
  shown = unrecord('inspect', '--input', 'gs://tar-bucket/tars', '--json', env=env)
  assert shown.returncode == 0, shown.stderr
  assert (json.loads(shown.stdout)['shards'], json.loads(shown.stdout)['samples']) == (4, 6)
