"""A job sent to a cluster (Flink's job server, Dataflow): what is checked at launch, and
how the runner's failures read.

Beam waits up to --job_server_timeout (300 s) at each of several calls for a job server
that is not there, downloads a Flink job-server jar when none is given, and lets Dataflow
fail minutes after submission on a local path. These checks refuse each in one line
before anything is submitted. Local runs (beam_jobs.local_runner) pass through untouched.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from typing import Optional, Tuple

import apache_beam
import grpc
from apache_beam.options.pipeline_options import (DebugOptions, PipelineOptions,
                                                  TestOptions)
from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc

from transforms import errors

# How long launch waits for a job server's or the Flink REST API's port to accept.
CONNECT_SECONDS = 3.0
# How long launch waits for a port that accepts to finish gRPC's handshake and answer the
# job API's first call. Beam itself waits --job_server_timeout (300 s) for the handshake.
GRPC_SECONDS = 10.0
DEFAULT_FLINK_MASTERS = ('[auto]', '[local]', None, '')


class RunnerUnavailable(Exception):
  """The job server or the cluster does not answer: nothing was submitted (exit 3)."""


def _address(text: str, default_port: int) -> Tuple[str, int]:
  text = text.split('://', 1)[-1].rstrip('/')
  host, _, port = text.rpartition(':')
  if not host or not port.isdigit():
    return text, default_port
  return host.strip('[]'), int(port)


def _answers(host: str, port: int) -> bool:
  try:
    with socket.create_connection((host, port), timeout=CONNECT_SECONDS):
      return True
  except OSError:
    return False


def _is_local_path(url: Optional[str]) -> bool:
  return bool(url) and ('://' not in url or url.startswith('file://'))


def _http_probe(host: str, port: int) -> Optional[dict]:
  """What an HTTP/1 server at host:port says to GET /config: Flink's REST API answers
  with its version ({} for another HTTP server); None when it does not speak HTTP/1."""
  try:
    with urllib.request.urlopen(f'http://{host}:{port}/config',
                                timeout=CONNECT_SECONDS) as response:
      body = response.read(65536)
  except urllib.error.HTTPError:
    return {}
  except (OSError, ValueError):
    return None
  try:
    answer = json.loads(body)
  except ValueError:
    return {}
  return answer if isinstance(answer, dict) else {}


def _job_service_problem(endpoint: str, host: str, port: int) -> Optional[str]:
  """Why the server at `endpoint` cannot take a job from this SDK, or None.

  Asks what Beam asks first (DescribePipelineOptions), with a short timeout: Beam waits
  up to 300 s for a gRPC handshake that an HTTP server never completes, then retries an
  unimplemented call five times and reports it as a bare _InactiveRpcError."""
  job_port = 'here: localhost:8099, make flink-up'
  channel = grpc.insecure_channel(f'{host}:{port}')
  try:
    try:
      grpc.channel_ready_future(channel).result(timeout=GRPC_SECONDS)
    except grpc.FutureTimeoutError:
      http = _http_probe(host, port)
      if http and 'flink-version' in http:
        return (f"{endpoint} (--job_endpoint) is Flink {http['flink-version']}'s REST API, "
                'not a Beam job server: give it to --runner FlinkRunner as --flink_master, '
                f"or point --job_endpoint at the job server's job port ({job_port})")
      what = 'an HTTP server' if http is not None else 'something'
      return (f'{endpoint} (--job_endpoint) is {what} that does not speak gRPC, not a Beam '
              f"job server; point --job_endpoint at the job server's job port ({job_port})")
    stub = beam_job_api_pb2_grpc.JobServiceStub(channel)
    try:
      stub.DescribePipelineOptions(beam_job_api_pb2.DescribePipelineOptionsRequest(),
                                   timeout=GRPC_SECONDS)
    except grpc.RpcError as e:
      if e.code() == grpc.StatusCode.UNIMPLEMENTED:
        return _not_a_job_service(f'{endpoint} (--job_endpoint)',
                                  'JobService/DescribePipelineOptions')
      return None  # Beam's own calls will meet it and say so
  finally:
    channel.close()
  return None


def _not_a_job_service(endpoint: str, method: str) -> str:
  return (f"{endpoint} speaks gRPC but not Beam's job API ({method} is not implemented "
          "there): it is not a Beam job server (a job server's artifact or expansion port, "
          f'say), or one of a Beam release this SDK ({apache_beam.__version__}) cannot talk '
          "to; point --job_endpoint at the job server's job port (here: localhost:8099, "
          "make flink-up) and check the job server's Beam version")


def check_launch(pipeline_options: PipelineOptions) -> None:
  """Raises ConfigError when the runner cannot take the job as configured."""
  options = pipeline_options.get_all_options()
  runner = options.get('runner')
  if runner == 'DataflowRunner':
    for name in ('output', 'temp_location', 'staging_location'):
      if _is_local_path(options.get(name)):
        raise errors.ConfigError(
            f'--{name} {options[name]} is a local path, which Dataflow\'s workers cannot '
            f'reach; give a gs:// URL')
    return
  endpoint = options.get('job_endpoint')
  if runner in ('PortableRunner', 'FlinkRunner') and endpoint and endpoint != 'embed':
    host, port = _address(endpoint, 8099)
    if not _answers(host, port):
      raise RunnerUnavailable(
          f'no job server answers at {endpoint} (--job_endpoint); start it (here: make '
          'flink-up) or check the address')
    problem = _job_service_problem(endpoint, host, port)
    if problem:
      raise RunnerUnavailable(problem)
    return
  if runner != 'FlinkRunner':
    return
  master = options.get('flink_master')
  if master not in DEFAULT_FLINK_MASTERS:
    host, port = _address(master, 8081)
    if not _answers(host, port):
      raise RunnerUnavailable(
          f"the Flink cluster's REST API does not answer at {master} (--flink_master); "
          'check that the cluster is up (here: make flink-up) and the address')
  if not options.get('flink_job_server_jar'):
    raise errors.ConfigError(
        'FlinkRunner needs --flink_job_server_jar JAR or --job_endpoint HOST:PORT: '
        'without either Beam downloads a job-server jar at run time, and Maven Central '
        'serves none for this Beam version (make flink-up builds one; docs/runners.md, '
        '"Run on Flink")')


# Flink's words when a TaskManager, with the tasks it ran, is gone. Through the job server
# the job's error is often only the last restart's: its slot request timed out
# ("Timeout has occurred: 30000 ms", slot.request.timeout) because no TaskManager is left.
_TASKMANAGER_LOST = ('TaskManager with id', 'Connection unexpectedly closed by remote task '
                     'manager', 'heartbeat of TaskManager', 'NoResourceAvailableException',
                     'Could not acquire the minimum required resources',
                     'is no longer reachable', 'TimeoutException: Timeout has occurred')
# The job server's, when it cannot reach the cluster to submit.
_CLUSTER_UNREACHABLE = ('Could not submit job', 'Connection refused',
                        'JobSubmissionException', 'Could not retrieve the execution result')

# Beam's fuser (QueryablePipeline) in the job server, before any task is scheduled.
_FUSION_ERROR = 'were consumed but never produced'
# gRPC's words for a job-API call the server at the endpoint does not have.
_UNIMPLEMENTED = 'Method not found: org.apache.beam.model.'


def on_flink(pipeline_options: PipelineOptions) -> bool:
  """A job sent to a Flink job server (not Beam's embedded one)."""
  options = pipeline_options.get_all_options()
  return options.get('runner') == 'FlinkRunner' or (
      options.get('runner') == 'PortableRunner' and options.get('job_endpoint') not in
      (None, 'embed'))


def explain_failure(text: str) -> Optional[Tuple[str, bool]]:
  """(cause, started) for a Flink failure unrecord can name, else None. `started` says
  whether workers may have written images before it."""
  lowered = text.lower()
  if _FUSION_ERROR in text:
    return ("the job server's fuser rejected the job's graph before anything ran "
            "(\"PCollectionNodes ... were consumed but never produced\": job servers such "
            'as Beam 2.62 fail so when one PCollection feeds both a Flatten and a '
            "GroupByKey, apache/beam#34647); check the job server's Beam version and, if "
            'the pipeline was changed, that no PCollection feeds both', False)
  if _UNIMPLEMENTED in text and 'job_management' in text:
    method = text.split(_UNIMPLEMENTED, 1)[1].split()[0].strip('"\'').rsplit('.', 1)[-1]
    return (_not_a_job_service('the job server', method), False)
  if any(words.lower() in lowered for words in _TASKMANAGER_LOST):
    return ('the Flink cluster lost its TaskManager: the job\'s tasks found no slot to run '
            'again in before its restart attempts ran out; check the TaskManagers (here: '
            'make flink-down, make flink-up)', True)
  if any(words.lower() in lowered for words in _CLUSTER_UNREACHABLE):
    return ('the job server could not submit the job to the Flink cluster; check that '
            'the cluster is up (here: make flink-up) and that --flink_master or the job '
            "server's --flink-master names it", False)
  return None


def is_dry_run(pipeline_options: PipelineOptions) -> bool:
  return bool(pipeline_options.view_as(TestOptions).dry_run)


def write_dry_run(job, pipeline_options: PipelineOptions) -> str:
  """DataflowRunner's --dry_run True: the job was translated, not submitted. With
  --dataflow_job_file F the job request goes to F (as Beam writes it when it submits)
  and the Beam pipeline it carries (Runner v2 stages it as pipeline.pb) to F.pipeline.pb.
  Returns the line to print."""
  path = pipeline_options.view_as(DebugOptions).dataflow_job_file
  if not path:
    return ('unrecord export: dry run: the Dataflow job was translated, not submitted '
            '(--dataflow_job_file FILE writes it)')
  # The job's environment (options, worker pools, the container image) as Beam builds it
  # at submission, from the pipeline it staged; nothing is staged in a dry run.
  from apache_beam.runners.dataflow.internal import apiclient  # pylint: disable=import-outside-toplevel
  job.proto.environment = apiclient.Environment(
      packages=[], options=job.options,
      environment_version=apiclient._FNAPI_ENVIRONMENT_MAJOR_VERSION,  # pylint: disable=protected-access
      proto_pipeline_staged_url='(not staged: dry run)',
      proto_pipeline=job.proto_pipeline).proto
  with open(path, 'w', encoding='utf-8') as f:
    f.write(job.json())
  with open(path + '.pipeline.pb', 'wb') as f:
    f.write(job.proto_pipeline.SerializeToString())
  return (f'unrecord export: dry run: the Dataflow job was translated, not submitted; '
          f'the job request is in {path}, its pipeline in {path}.pipeline.pb')
