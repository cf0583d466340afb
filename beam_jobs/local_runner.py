"""The local runner: the one place where running on this machine differs from running on
a cluster in more than options.

Locally the job names FnApiRunner (DirectRunner's batch engine) so Beam 2.77 never tries to
download Prism, with one worker process per core, started warm (`worker.WarmPool`: forked
from a process that imported Beam once; docs/benchmarks.md has its gain), or, for an
input under `worker.SMALL_INPUT_BYTES`, one worker in the launcher itself. On any other
runner these functions change nothing: the pipeline options name the runner.
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Sequence, Tuple

from apache_beam.options.pipeline_options import (DirectOptions, PipelineOptions,
                                                  StandardOptions)
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.runner import PipelineRunner
from apache_beam.transforms import environments

from beam_jobs import worker as worker_lib

LOCAL_RUNNERS = (None, 'DirectRunner', 'FnApiRunner')
# Runners that take --environment_type; under LOOPBACK their workers are the launcher.
PORTABLE_RUNNERS = ('PortableRunner', 'FlinkRunner', 'SparkRunner', 'PrismRunner')


def bypass_proxy_for_local_workers() -> None:
  """Keeps the runner's gRPC channels to its own worker processes off any HTTP proxy.

  gRPC honours http_proxy/https_proxy; behind a proxy the local runner would otherwise
  send its localhost control traffic to the proxy and hang.
  """
  hosts = [h for h in os.environ.get('no_grpc_proxy', '').split(',') if h]
  for host in ('localhost', '127.0.0.1'):
    if host not in hosts:
      hosts.append(host)
  os.environ['no_grpc_proxy'] = ','.join(hosts)


def configure_runner(pipeline_options: PipelineOptions, argv: Sequence[str],
                     pool: Optional[worker_lib.WarmPool] = None
                     ) -> Tuple[str, Optional[PipelineRunner]]:
  """Local runs: FnApiRunner (no Prism download), one worker process per core.

  Returns the runner's description, and a runner instance when the local workers are
  processes: `pool`'s warm ones, or cold ones without a pool (else None: the pipeline
  options name the runner).
  """
  standard = pipeline_options.view_as(StandardOptions)
  if standard.runner not in LOCAL_RUNNERS:
    return standard.runner, None
  standard.runner = 'FnApiRunner'
  direct = pipeline_options.view_as(DirectOptions)
  given = ' '.join(argv)
  why = ''
  if '--direct_num_workers' not in given:
    direct.direct_num_workers = worker_lib.default_workers(list(argv))
    if direct.direct_num_workers == 1 and (os.cpu_count() or 1) > 1:
      why = (f': input under {worker_lib.SMALL_INPUT_BYTES // 2**20} MB, '
             '--direct_num_workers N for more')
  if '--direct_running_mode' not in given:
    direct.direct_running_mode = ('multi_processing' if direct.direct_num_workers != 1
                                  else 'in_memory')
  description = (f'DirectRunner (FnApiRunner, {direct.direct_num_workers} '
                 f'{direct.direct_running_mode} worker(s){why})')
  if direct.direct_running_mode != 'multi_processing':
    return description, None
  # The same worker processes Beam's multi_processing mode starts, but already warm, or
  # (no pool) Beam's own with their stderr in the run's log, not on the terminal.
  # FnApiRunner only takes a custom worker environment in its default running mode.
  direct.direct_running_mode = 'in_memory'
  environment = environments.SubprocessSDKEnvironment.from_command_string(
      pool.worker_command() if pool is not None else worker_lib.cold_command())
  return description, fn_runner.FnApiRunner(default_environment=environment)


def one_worker_here(pipeline_options: PipelineOptions,
                    runner_instance: Optional[PipelineRunner]) -> bool:
  """Whether the job runs on one worker inside this process (FnApiRunner in_memory, one
  worker: `configure_runner`'s choice for a small input): nothing to spread work over,
  so the graph needs no Reshuffle (ptransforms.ExportImages' `spread`)."""
  options = pipeline_options.get_all_options()
  return (runner_instance is None and options.get('runner') in LOCAL_RUNNERS
          and options.get('direct_num_workers') == 1
          and options.get('direct_running_mode') in (None, 'in_memory'))


class _BeamNoise(logging.Filter):
  """Drops two warnings every local run printed that do not apply to unrecord.

  FnApiRunner advises multi_processing mode when given several workers in its default
  mode; the warm workers are processes already. Each worker warns that registries may
  not be effective without a semi-persistent directory; unrecord registers nothing.
  """
  NOISE = ('direct_running_mode should be', 'No semi_persistent_directory found')

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(noise in message for noise in self.NOISE)


_BEAM_NOISE = _BeamNoise()


def quiet_beam_noise() -> None:
  """Installs the filter once per logger, however often main() runs in one process."""
  for name in (fn_runner.__name__, 'apache_beam.runners.portability.local_job_service'):
    logging.getLogger(name).addFilter(_BEAM_NOISE)


def is_local(pipeline_options: PipelineOptions) -> bool:
  """True for runners whose workers run on this machine and can reach 127.0.0.1."""
  options = pipeline_options.get_all_options()
  runner = options.get('runner')
  if runner in ('FnApiRunner', 'DirectRunner', None):
    return True
  if runner in PORTABLE_RUNNERS and options.get('environment_type') == 'LOOPBACK':
    return True  # the SDK workers run in this launcher, whatever the job endpoint
  return runner == 'PortableRunner' and options.get('job_endpoint') == 'embed' and \
      options.get('environment_type') in ('LOOPBACK', 'EXTERNAL')
