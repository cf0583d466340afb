"""An object-store output that cannot be reached: one line, exit 3, in seconds.

Real servers on 127.0.0.1: a port nothing listens on (refused), and a socket that
accepts connections and never answers (silent); a host name that cannot resolve; and a
protocol fsspec does not know.
"""

import json
import socket
import time

import pytest

from tests import emulators
from tests import fixtures
from tests.conftest import run_unrecord
from transforms.output import root_files

# The promise: 30 s from the command to its line. The check itself waits at most
# 10 (10 s) for a silent store, and a refused connection or
# a failed DNS lookup ends it at once; the rest is the launcher's own start (importing
# Beam), 3-5 s on an idle 2-core machine but up to 15 s measured on this shared one under
# load. So the time the check adds is bounded against the launcher's start measured in
# the same session (a run that stops at the output before any network): at most the
# check's deadline plus 15 s of scheduling noise (8 s was once exceeded while a whole
# suite ran beside the test). Before, a refused gs:// endpoint took 41 s more than that
# start (gcsfs's six retries), so the bound still tells the fix from the old code.
NOISE_SECONDS = 15


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
  folder = tmp_path_factory.mktemp('unreachable_in')
  fixtures.write_tfrecord(str(folder / 'part-0.tfrecord'), [
      fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(
          fixtures.photo(i, 24, 20)))}) for i in range(4)])
  return folder


@pytest.fixture(scope='module')
def unknown_protocol(shards):
  """The run into `foo://`, and its seconds: the launcher's start, as it stops at the
  output before any network."""
  started = time.monotonic()
  result = run_unrecord('export', '--input', str(shards), '--output', 'foo://bucket/out',
                        '--quiet', timeout=180)
  return result, time.monotonic() - started


@pytest.fixture(scope='module')
def refused():
  """An endpoint where nothing listens: a port bound, then closed."""
  return f'http://127.0.0.1:{emulators.free_port()}'


@pytest.fixture(scope='module')
def silent():
  """An endpoint that accepts connections (the kernel completes them) and never answers."""
  server = socket.socket()
  server.bind(('127.0.0.1', 0))
  server.listen(64)
  yield f'http://127.0.0.1:{server.getsockname()[1]}'
  server.close()


def _gs_env(endpoint):
  return emulators.gcs_env(endpoint)


def _s3_options(endpoint):
  return json.dumps({'s3': {'key': emulators.S3_KEY, 'secret': emulators.S3_SECRET,
                            'client_kwargs': {'endpoint_url': endpoint}}})


CASES = {
    # name: (output URL, how the endpoint is given, what the line says the cause is)
    'gs refused (STORAGE_EMULATOR_HOST)': ('gs://bucket/out', 'gs-env:refused',
                                           'was refused'),
    'gs refused (--storage_options)': ('gs://bucket/out', 'gs-options:refused',
                                       'was refused'),
    'gs silent': ('gs://bucket/out', 'gs-env:silent', 'no answer from gs://bucket/out'),
    'gs host unknown (DNS)': ('gs://bucket/out', 'gs-env:dns', 'cannot be resolved (DNS'),
    's3 refused (--storage_options)': ('s3://bucket/out', 's3-options:refused',
                                       'was refused'),
    's3 silent (FSSPEC_S3_ENDPOINT_URL)': ('s3://bucket/out', 's3-env:silent',
                                           'no answer from s3://bucket/out'),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_an_unreachable_output_store_ends_in_one_line_with_exit_3(
    unrecord, shards, refused, silent, unknown_protocol, case):
  url, given, cause = CASES[case]
  how, server = given.split(':')
  endpoint = {'refused': refused, 'silent': silent,
              'dns': 'http://no-such-host.invalid:4443'}[server]
  args, env = [], {}
  if how == 'gs-env':
    env.update(_gs_env(endpoint))
  elif how == 'gs-options':
    args += ['--storage_options', json.dumps({'gs': {'endpoint_url': endpoint,
                                                     'token': 'anon'}})]
  elif how == 's3-options':
    args += ['--storage_options', _s3_options(endpoint)]
  else:
    env.update(emulators.s3_env(endpoint))
  started = time.monotonic()
  result = unrecord('export', '--input', str(shards), '--output', url, '--quiet', *args,
                    env=env, timeout=180)
  seconds = time.monotonic() - started
  start = unknown_protocol[1]
  print(f'{case}: exit {result.returncode} in {seconds:.1f} s (the launcher alone: '
        f'{start:.1f} s): {result.stderr.strip()}')
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 3, result.stderr[-3000:]
  assert len(lines) == 1, result.stderr[-3000:]
  line = lines[0]
  assert line.startswith(f"unrecord export: error: the output {url!r} cannot be reached: ")
  assert cause in line
  if server != 'silent':
    assert endpoint.split('//')[1].split(':')[0] in line  # the host it tried
  assert 'check the endpoint' in line and '--storage_options' in line
  assert '--skip_existing' not in line and 'Unknown error' not in line
  assert emulators.S3_SECRET not in result.stdout + result.stderr
  if server == 'silent':
    assert f'within {root_files.LAUNCH_CHECK_SECONDS:g} s' in line
    assert seconds - start < root_files.LAUNCH_CHECK_SECONDS + NOISE_SECONDS
  else:
    # The promise, whole: the line within 30 s of the command. (gcsfs alone, given
    # an endpoint but no token, spends up to 15 s looking for GCE's metadata server for
    # credentials before anything of unrecord's runs: the `--storage_options` case.)
    assert seconds < 30


def test_an_unknown_protocol_is_one_line_and_exit_3(unknown_protocol):
  result, seconds = unknown_protocol
  print(f'foo://: exit {result.returncode} in {seconds:.1f} s: {result.stderr.strip()}')
  assert result.returncode == 3, result.stderr[-3000:]
  assert result.stderr.strip() == (
      "unrecord export: error: the output 'foo://bucket/out' cannot be used: unknown "
      "protocol 'foo://' (fsspec knows no such protocol); check the URL (gs://, s3://, a "
      "local folder ...), or install the fsspec package for that store")
  assert seconds < 60  # the launcher's start alone; a slow one shows in every case above


@pytest.mark.parametrize('given', ['gs-env', 's3-options'])
def test_an_unreachable_input_store_ends_in_one_line_with_exit_3(unrecord, refused,
                                                                 unknown_protocol, given,
                                                                 tmp_path):
  url = 'gs://bucket/data' if given == 'gs-env' else 's3://bucket/data/*.tfrecord'
  args, env = [], {}
  if given == 'gs-env':
    env.update(_gs_env(refused))
  else:
    args += ['--storage_options', _s3_options(refused)]
  out = tmp_path / 'out'
  started = time.monotonic()
  result = unrecord('export', '--input', url, '--output', str(out), '--quiet', *args,
                    env=env, timeout=180)
  seconds = time.monotonic() - started
  print(f'input {url}: exit {result.returncode} in {seconds:.1f} s: '
        f'{result.stderr.strip()}')
  assert result.returncode == 3, result.stderr[-3000:]
  assert result.stderr.strip().splitlines() == [
      f"unrecord export: error: the input {url!r} cannot be reached: the connection to "
      f"{refused.split('//')[1]} (the endpoint, from "
      f"{'STORAGE_EMULATOR_HOST' if given == 'gs-env' else 'client_kwargs.endpoint_url'})"
      " was refused: nothing listens there; check the endpoint and the network (and the "
      "credentials), and --storage_options; nothing was written"]
  assert not out.exists()  # the root this run made is gone again
  assert seconds - unknown_protocol[1] < NOISE_SECONDS


def test_an_unknown_input_protocol_is_one_line_and_exit_3(unrecord, tmp_path):
  result = unrecord('export', '--input', 'foo://bucket/data', '--output',
                    str(tmp_path / 'out'), '--quiet', timeout=180)
  assert result.returncode == 3, result.stderr[-3000:]
  assert result.stderr.strip() == (
      "unrecord export: error: the input 'foo://bucket/data' cannot be read: unknown "
      "protocol 'foo://' (fsspec knows no such protocol); check the URL (gs://, s3://, a "
      "local folder ...), or install the fsspec package for that store")


def test_a_failed_name_lookup_mid_run_is_said_in_words_not_as_an_errno():
  # What gcsfs raised mid-run when the store's host stopped resolving: before, the line
  # said "Unknown error -2 (-2)" (the errno of socket.gaierror).
  try:
    socket.getaddrinfo('no-such-host.invalid', 443)
  except socket.gaierror as e:
    error = e
  fault = root_files.storage_fault('cannot write gs://b/x.png', error)
  assert 'Unknown error' not in fault.message
  assert fault.message.startswith(
      'cannot write gs://b/x.png: a host name cannot be resolved (DNS: ')
  assert fault.message.endswith('; check that the output storage is reachable and writable, '
                                'then run the same command with --skip_existing to finish')


@pytest.mark.parametrize('given', ['unknown protocol', 's3 refused'])
def test_inspect_of_an_input_it_cannot_reach_is_one_line_and_exit_3(unrecord, refused,
                                                                   given):
  """`unrecord inspect` checks its inputs as the export does: one line, exit 3, never a
  traceback (it printed fsspec's ValueError traceback for `foo://` before)."""
  if given == 'unknown protocol':
    args, expected = ['--input', 'foo://bucket/data'], (
        "unrecord inspect: error: the input 'foo://bucket/data' cannot be read: unknown "
        "protocol 'foo://' (fsspec knows no such protocol)")
  else:
    args, expected = ['--input', 's3://bucket/data/*.tfrecord', '--storage_options',
                      _s3_options(refused)], (
        "unrecord inspect: error: the input 's3://bucket/data/*.tfrecord' cannot be "
        f"reached: the connection to {refused.split('//')[1]}")
  result = unrecord('inspect', *args, timeout=180)
  assert result.returncode == 3, result.stdout + result.stderr[-3000:]
  [line] = result.stderr.strip().splitlines()
  assert line.startswith(expected), line
  assert 'Traceback' not in result.stdout + result.stderr
