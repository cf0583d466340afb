"""Nightly incremental export from Airflow: only new or changed shards are exported.

The same DAG runs the export one of two ways, chosen by `UNRECORD_RUNNER` in the
scheduler's environment:

- `dataflow` (the default): the Flex Template built by deploy/dataflow/build.sh.
- `local`: `unrecord export` on the Airflow worker itself (DirectRunner, one process per
  core), reading `UNRECORD_INPUT` and writing `UNRECORD_OUTPUT`; for one machine, and for
  testing this DAG with `airflow dags test` (tests/test_airflow_schedule.py).

Either way `export_images` fails when the export does (exit 1: more failures than
--max_failures; 2: bad options or a busy root; 3: storage or runner), and
`wait_for_success` passes only once the output root holds `_SUCCESS`, which unrecord
removes when a run starts and writes only when it succeeds: tasks downstream of it see
exactly the export's outcome.
"""

import os
import shlex
import sys

import pendulum
from airflow import DAG
from airflow.providers.google.cloud.operators.dataflow import (
    DataflowStartFlexTemplateOperator)
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.sensors.python import PythonSensor

PROJECT = 'PROJECT'
REGION = 'europe-west1'
BUCKET = 'BUCKET'
IMAGE = f'{REGION}-docker.pkg.dev/{PROJECT}/images/unrecord:VERSION'

RUNNER = os.environ.get('UNRECORD_RUNNER', 'dataflow')
INPUT = os.environ.get('UNRECORD_INPUT', f'gs://{BUCKET}/tfrecords/*.tfrecord')
OUTPUT = os.environ.get('UNRECORD_OUTPUT', f'gs://{BUCKET}/images')
MAX_FAILURES = os.environ.get('UNRECORD_MAX_FAILURES', '100')


def output_succeeded(output: str = OUTPUT) -> bool:
  """True once the output root holds `_SUCCESS` (any fsspec URL)."""
  import fsspec  # pylint: disable=import-outside-toplevel
  fs, path = fsspec.core.url_to_fs(output.rstrip('/') + '/_SUCCESS')
  fs.invalidate_cache()
  return fs.exists(path)


with DAG(
    dag_id='unrecord_nightly',
    schedule='0 2 * * *',
    start_date=pendulum.datetime(2026, 11, 1, tz='UTC'),
    catchup=False,
    max_active_runs=1,
    tags=['unrecord'],
) as dag:
  if RUNNER == 'local':
    unrecord = os.path.join(os.path.dirname(sys.executable), 'unrecord')
    export = BashOperator(
        task_id='export_images',
        bash_command=' '.join(shlex.quote(a) for a in (
            unrecord, 'export', '--input', INPUT, '--output', OUTPUT, '--incremental',
            '--max_failures', MAX_FAILURES, '--quiet')),
    )
  else:
    export = DataflowStartFlexTemplateOperator(
        task_id='export_images',
        project_id=PROJECT,
        location=REGION,
        wait_until_finished=True,
        body={
            'launchParameter': {
                'jobName': 'unrecord-nightly-{{ ds_nodash }}',
                'containerSpecGcsPath': f'gs://{BUCKET}/templates/unrecord.json',
                'parameters': {
                    'input': INPUT,
                    'output': OUTPUT,
                    'incremental': 'true',
                    'max_failures': MAX_FAILURES,
                    'sdk_container_image': IMAGE,
                },
                'environment': {'tempLocation': f'gs://{BUCKET}/tmp', 'maxWorkers': 20},
            },
        },
    )
  success = PythonSensor(
      task_id='wait_for_success',
      python_callable=output_succeeded,
      poke_interval=5 if RUNNER == 'local' else 60,
      timeout=30 if RUNNER == 'local' else 1800,
  )
  export >> success
