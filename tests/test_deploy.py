"""deploy/: every option a manifest, template or schedule passes is a real job option."""

import ast
import json
import os
import re

import yaml
from apache_beam.options.pipeline_options import FlinkRunnerOptions

from beam_jobs import export_images
from tests.conftest import REPO

DEPLOY = os.path.join(REPO, 'deploy')


def _read(*parts):
  with open(os.path.join(DEPLOY, *parts)) as f:
    return f.read()


def _option_strings():
  return {o for action in export_images._beam_parser()._actions
          for o in action.option_strings}


def _pyproject_beam_version():
  text = open(os.path.join(REPO, 'pyproject.toml')).read()
  return re.search(r'"apache-beam==([0-9.]+)\.\*"', text).group(1)


def test_image_lock_and_pyproject_agree_on_beam():
  minor = _pyproject_beam_version()  # e.g. 2.77
  dockerfile = _read('Dockerfile')
  beam = re.search(r'ARG BEAM_VERSION=([0-9.]+)', dockerfile).group(1)
  assert beam.startswith(minor + '.')
  assert 'FROM apache/beam_python3.11_sdk:${BEAM_VERSION}' in dockerfile
  lock = _read('requirements.lock')
  assert f'apache-beam=={beam}' in lock
  assert 'pip check' in dockerfile and 'requirements.lock' in dockerfile
  pins = [line for line in lock.splitlines() if line and not line.startswith('#')]
  assert all('==' in line for line in pins)
  for package in ('numpy', 'opencv-python-headless', 'pillow', 'fsspec', 'gcsfs', 's3fs',
                  'google-crc32c', 'protobuf', 'fpng'):
    assert any(line.lower().startswith(package + '==') for line in pins), package
  assert not any(line.lower().startswith(('tensorflow', 'pytest')) for line in pins)


def test_flex_template_parameters_are_job_options():
  metadata = json.loads(_read('dataflow', 'metadata.json'))
  options = _option_strings()
  names = {p['name'] for p in metadata['parameters']}
  for name in names:
    assert f'--{name}' in options, name
  required = {p['name'] for p in metadata['parameters'] if not p.get('isOptional')}
  assert required == {'input', 'output'}


def test_flex_template_main_turns_parameters_into_a_valid_command_line():
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      'template_main', os.path.join(DEPLOY, 'dataflow', 'main.py'))
  main = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(main)
  argv = main.template_argv(['--input=gs://b/x/*.tfrecord', '--output=gs://b/out',
                             '--incremental=true', '--skip_existing=false',
                             '--format=jpeg', '--sdk_container_image=img'])
  assert argv == ['--input=gs://b/x/*.tfrecord', '--output=gs://b/out', '--incremental',
                  '--format=jpeg', '--sdk_container_image=img', '--no_wait']
  assert export_images.unknown_arguments(argv) == []


def _shell_parameters(text):
  return re.findall(r'--parameters\s+([a-z_]+)=', text)


def test_scripts_and_schedules_pass_only_job_options():
  options = _option_strings()
  for name in _shell_parameters(_read('dataflow', 'run.sh')):
    assert f'--{name}' in options, name
  body = re.search(r'"parameters": (\{.*?\})', _read('schedule', 'cloud_scheduler.sh'),
                   re.S).group(1)
  for name in re.findall(r'"([a-z_]+)":', body):
    assert f'--{name}' in options, name
  assert '--schedule "0 2 * * *"' in _read('schedule', 'cloud_scheduler.sh')


def test_airflow_dag_parses_and_passes_only_job_options():
  source = _read('schedule', 'airflow_dag.py')
  tree = ast.parse(source)
  calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and
           getattr(node.func, 'id', '') == 'DataflowStartFlexTemplateOperator']
  assert len(calls) == 1
  body = next(k.value for k in calls[0].keywords if k.arg == 'body')
  launch = next(v for k, v in zip(body.keys, body.values) if k.value == 'launchParameter')
  parameters = next(v for k, v in zip(launch.keys, launch.values)
                    if k.value == 'parameters')
  names = [k.value for k in parameters.keys]
  options = _option_strings()
  assert {'input', 'output', 'incremental'} <= set(names)
  for name in names:
    assert f'--{name}' in options, name
  dag = next(node for node in ast.walk(tree) if isinstance(node, ast.Call) and
             getattr(node.func, 'id', '') == 'DAG')
  schedule = next(k.value.value for k in dag.keywords if k.arg == 'schedule')
  assert schedule == '0 2 * * *'


def _container_args(document):
  spec = document['spec']
  if document['kind'] == 'CronJob':
    spec = spec['jobTemplate']['spec']
  (container,) = spec['template']['spec']['containers']
  return container['args']


def test_flink_manifests_match_versions_and_pass_only_job_options():
  deployment = yaml.safe_load(_read('flink', 'flink-deployment.yaml'))
  version = deployment['spec']['flinkVersion']  # v1_20
  dotted = version[1:].replace('_', '.')
  assert dotted in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
  assert deployment['spec']['image'] == f'flink:{dotted}'
  assert re.search(rf'ARG FLINK_VERSION={re.escape(dotted)}\b', _read('Dockerfile'))
  (sidecar,) = deployment['spec']['taskManager']['podTemplate']['spec']['containers']
  assert sidecar['args'] == ['--worker_pool']
  assert sidecar['ports'][0]['containerPort'] == 50000
  for name in ('submit-job.yaml', 'cronjob.yaml'):
    args = _container_args(yaml.safe_load(_read('flink', name)))
    assert export_images.unknown_arguments(args) == [], name
    assert f'--flink_version={dotted}' in args
    assert '--runner=FlinkRunner' in args and '--environment_type=EXTERNAL' in args
    assert '--environment_config=localhost:50000' in args
  cron = yaml.safe_load(_read('flink', 'cronjob.yaml'))
  assert cron['spec']['schedule'] == '0 2 * * *'
  assert '--incremental' in _container_args(cron)


def test_airflow_imports_the_dag_with_the_real_operator(tmp_path):
  import subprocess
  import sys
  script = ('import sys; sys.path.insert(0, sys.argv[1]); import airflow_dag; '
            'd = airflow_dag.dag; t = d.tasks[0]; '
            'print(d.dag_id, type(t).__name__, sorted(t.body["launchParameter"]'
            '["parameters"]))')
  result = subprocess.run(
      [sys.executable, '-c', script, os.path.join(DEPLOY, 'schedule')],
      capture_output=True, text=True, timeout=300,
      env=dict(os.environ, AIRFLOW_HOME=str(tmp_path)))
  assert result.returncode == 0, result.stderr[-3000:]
  printed = result.stdout.strip().splitlines()[-1]  # after any of Airflow's log lines
  assert printed.split()[:2] == ['unrecord_nightly', 'DataflowStartFlexTemplateOperator']
  assert "'incremental'" in printed and "'input'" in printed
