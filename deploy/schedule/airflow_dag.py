"""Nightly incremental export on Dataflow, from Airflow (Google provider).

Launches the Flex Template built by deploy/dataflow/build.sh; only new or changed shards
are exported (--incremental), so each night costs what changed.
"""

import pendulum
from airflow import DAG
from airflow.providers.google.cloud.operators.dataflow import (
    DataflowStartFlexTemplateOperator)

PROJECT = 'PROJECT'
REGION = 'europe-west1'
BUCKET = 'BUCKET'
IMAGE = f'{REGION}-docker.pkg.dev/{PROJECT}/images/unrecord:VERSION'

with DAG(
    dag_id='unrecord_nightly',
    schedule='0 2 * * *',
    start_date=pendulum.datetime(2026, 11, 1, tz='UTC'),
    catchup=False,
    max_active_runs=1,
    tags=['unrecord'],
) as dag:
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
                  'input': f'gs://{BUCKET}/tfrecords/*.tfrecord',
                  'output': f'gs://{BUCKET}/images',
                  'incremental': 'true',
                  'max_failures': '100',
                  'sdk_container_image': IMAGE,
              },
              'environment': {'tempLocation': f'gs://{BUCKET}/tmp', 'maxWorkers': 20},
          },
      },
  )
