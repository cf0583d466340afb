"""The Dataflow job, offline: `--runner DataflowRunner --dry_run True` against the GCS
emulator translates the whole job, as Beam would submit it, without Google Cloud.

What this exercises: launch (the output check and the sampled schema, against the
emulator), Beam's translation to the Runner v2 pipeline, the job's environment and
options as Beam builds them at submission. What it cannot: staging files to a real
bucket, the Dataflow API, the workers.
"""

import json
import os
import tempfile

import pytest
from apache_beam.internal import pickler
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from tests import emulators
from tests import fixtures
from tests.conftest import REPO, run_unrecord
from transforms.output import export_config

IMAGE = 'europe-west1-docker.pkg.dev/unrecord-test/images/unrecord:test'
BUCKET = 'unrecord-test'
# Options a user sets, with values none of them defaults to.
OPTIONS = {'format': 'webp', 'quality': 80, 'name_template': '{label}/{id}.{ext}',
           'max_failures': 3, 'split_size_mb': 8, 'manifest_format': 'parquet',
           'value_range': '0,255', 'skip_existing': True}


def _flags(options):
  for name, value in options.items():
    yield from ([f'--{name}'] if value is True else [f'--{name}', str(value)])


@pytest.fixture(scope='module')
def gcs():
  with emulators.gcs_server() as host:
    env = emulators.gcs_env(host)
    os.environ.update(env)
    import gcsfs  # pylint: disable=import-outside-toplevel
    fs = gcsfs.GCSFileSystem(endpoint_url=host, token='anon')
    fs.mkdir(BUCKET)
    yield fs, env
    for name in env:
      os.environ.pop(name, None)


def _dry_run(tmp_path, gcs, *extra):
  fs, env = gcs
  local = tmp_path / 'in.tfrecord'
  fixtures.write_tfrecord(str(local), [fixtures.example({
      'image': fixtures.bytes_feature(fixtures.serialized_tensor(fixtures.photo(i, 24, 20))),
      'id': fixtures.bytes_feature(f'r{i}'.encode()),
      'label': fixtures.int64_feature(i)}) for i in range(4)])
  fs.put(str(local), f'{BUCKET}/in/shard-0.tfrecord')
  job_file = str(tmp_path / 'job.json')
  result = run_unrecord(
      'export', '--input', f'gs://{BUCKET}/in/*.tfrecord', '--output',
      f'gs://{BUCKET}/out', *_flags(OPTIONS), '--runner', 'DataflowRunner', '--dry_run',
      'True', '--no_auth', '--project', 'unrecord-test', '--region', 'europe-west1',
      '--temp_location', f'gs://{BUCKET}/tmp', '--sdk_container_image', IMAGE,
      '--dataflow_job_file', job_file, *extra, env=env)
  return result, job_file


def _configs(pipeline):
  """Every ExportConfig the pipeline's DoFns carry to the workers."""
  found = []
  for transform in pipeline.components.transforms.values():
    if transform.spec.urn != common_urns.primitives.PAR_DO.urn:
      continue
    payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
    fn = pickler.loads(payload.do_fn.payload)[0]
    config = getattr(fn, '_config', None)
    if isinstance(config, export_config.ExportConfig):
      found.append((transform.unique_name, config))
  return found


def test_dry_run_translates_the_whole_job_with_every_option_and_nothing_local(tmp_path,
                                                                             gcs):
  result, job_file = _dry_run(tmp_path, gcs)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == (
      'unrecord export: dry run: the Dataflow job was translated, not submitted; the job '
      f'request is in {job_file}, its pipeline in {job_file}.pipeline.pb')
  job = json.load(open(job_file))
  pipeline = beam_runner_api_pb2.Pipeline.FromString(
      open(job_file + '.pipeline.pb', 'rb').read())
  # The steps: the one composite, and the stages under it.
  names = {t.unique_name for t in pipeline.components.transforms.values()}
  for step in ('Export', 'Export/PlanRanges', 'Export/Export', 'Export/WriteParts',
               'Export/CommitAndReport'):
    assert step in names, sorted(names)
  # Every worker runs the project's image, and only it.
  environments = pipeline.components.environments.values()
  assert environments and all(e.urn == common_urns.environments.DOCKER.urn and
                              beam_runner_api_pb2.DockerPayload.FromString(e.payload)
                              .container_image == IMAGE for e in environments)
  (pool,) = job['environment']['workerPools']
  assert {c['containerImage'] for c in pool['sdkHarnessContainerImages']} == {IMAGE}
  # Every unrecord option reaches the job: in its options, and in the config the
  # workers unpickle.
  options = job['environment']['sdkPipelineOptions']['options']
  for name, value in OPTIONS.items():
    assert options[name] == (float(value) if isinstance(value, int) and
                             not isinstance(value, bool) else value), name
  configs = _configs(pipeline)
  assert configs
  for _, config in configs:
    assert config.render.encode.format == 'webp' and config.render.encode.quality == 80
    assert config.render.name_template == '{label}/{id}.{ext}'
    assert config.max_failures == 3 and config.skip_existing
    assert config.manifest_format == 'parquet'
    assert config.read.split_bytes == 8 << 20
    assert config.output == f'gs://{BUCKET}/out'
    # Nothing that only works on this machine: no progress address (127.0.0.1).
    assert config.progress is None
  # (--dataflow_job_file is the launcher's own output, on this machine by design.)
  assert options.pop('dataflow_job_file') == job_file
  text = (json.dumps(job) + repr([c for _, c in configs])).replace(job_file, 'JOB_FILE')
  # A local path starts a quoted string (JSON's or repr's): gs://b/tmp/ is not one.
  for local in ('127.0.0.1', f'"{tempfile.gettempdir()}/', f"'{tempfile.gettempdir()}/",
                REPO, 'worker_pool_main', 'sdk_worker_main'):
    where = text.find(local)
    assert where < 0, (local, text[max(0, where - 300):where + 100])
  assert options['temp_location'].startswith(f'gs://{BUCKET}/tmp/')
  # Nothing was written to the output but the run's identity (and the launch's log).
  fs, _ = gcs
  assert [p for p in fs.find(f'{BUCKET}/out') if not p.startswith(
      f'{BUCKET}/out/_logs/')] == [f'{BUCKET}/out/_unrecord_run.json']


@pytest.mark.parametrize('local', ['output', 'temp_location'])
def test_a_local_path_is_refused_at_launch(tmp_path, local):
  args = {'output': f'gs://{BUCKET}/out', 'temp_location': f'gs://{BUCKET}/tmp'}
  args[local] = str(tmp_path / local)
  source = fixtures.write_tfrecord(str(tmp_path / 'in.tfrecord'), [fixtures.example({
      'image': fixtures.bytes_feature(fixtures.serialized_tensor(fixtures.photo(0, 8, 8)))})])
  result = run_unrecord('export', '--input', source, '--output', args['output'],
                        '--runner', 'DataflowRunner', '--project', 'unrecord-test',
                        '--region', 'europe-west1', '--temp_location',
                        args['temp_location'], timeout=60)
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.strip().splitlines() == [
      f'unrecord export: error: --{local} {args[local]} is a local path, which Dataflow\'s '
      'workers cannot reach; give a gs:// URL']
