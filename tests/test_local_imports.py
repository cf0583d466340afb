"""A local run's processes never import Google Cloud's clients (beam_jobs.held_imports)."""

import json
import os
import subprocess
import sys

import pytest

from beam_jobs import held_imports
from tests.conftest import REPO
from tests.test_export_job import OFFLINE
from tests.test_logs import _check_images, eight_photos, lean_python  # noqa: F401  pylint: disable=unused-import

# Put first on PYTHONPATH: every Python process of the run writes the modules it holds
# (those with code: a namespace package a .pth file made at start-up has none) to a
# file of its own when it exits, by os._exit (the warm pool's processes, the console
# script) or not; written to a temp file and renamed, so a process whose two threads
# exit at once leaves one whole file.
SITECUSTOMIZE = '''
import atexit, json, os, sys, threading
_exit = os._exit
def _dump(*_):
  # Whole or not at all: two threads of a process may exit at once (a worker's watchdog
  # and its main thread), and two writers of one file leave it garbled.
  names = sorted(m for m, v in list(sys.modules.items()) if getattr(v, '__file__', None))
  final = os.path.join(os.environ['MODULES_DIR'], str(os.getpid()))
  temp = f'{final}.{threading.get_ident()}.tmp'
  with open(temp, 'w') as f:
    json.dump({'argv': sys.argv, 'modules': names}, f)
  os.replace(temp, final)
def _dump_and_exit(code):
  _dump()
  _exit(code)
os._exit = _dump_and_exit
atexit.register(_dump)
'''


@pytest.mark.parametrize('venv', ['venv', 'lean'])
def test_a_local_run_imports_no_dataflow_or_google_cloud_module(venv, eight_photos, tmp_path,
                                                                request):
  python = request.getfixturevalue('lean_python') if venv == 'lean' else sys.executable
  source, photos = eight_photos
  out, hook, dumps = tmp_path / 'out', tmp_path / 'hook', tmp_path / 'modules'
  hook.mkdir()
  dumps.mkdir()
  (hook / 'sitecustomize.py').write_text(SITECUSTOMIZE)
  env = dict(os.environ, PYTHONPATH=f'{hook}{os.pathsep}{REPO}', MODULES_DIR=str(dumps),
             **OFFLINE)
  env.pop('PYTHONHOME', None)
  result = subprocess.run([python, '-m', 'beam_jobs.cli', 'export', '--input', source,
                           '--output', str(out), '--quiet', '--direct_num_workers', '2'],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stderr == ''
  _check_images(out, photos)
  processes = [json.loads((dumps / name).read_text()) for name in os.listdir(dumps)
               if not name.endswith('.tmp')]
  by_role = {}
  for process in processes:
    role = ('launcher' if 'export' in process['argv'] else
            'pool' if '--serve' in process['argv'] else  # the importer, its forks
            'client' if '--client' in process['argv'] else 'other')
    by_role.setdefault(role, []).append(set(process['modules']))
  # Every process was seen: the launcher ran the local runner; the pool's importer and
  # its two forked workers, Beam's harness (the runner started a client for each)...
  assert sorted((role, len(sets)) for role, sets in by_role.items()) == [
      ('client', 2), ('launcher', 1), ('pool', 3)]
  assert 'apache_beam.runners.portability.fn_api_runner.fn_runner' in by_role['launcher'][0]
  for modules in by_role['pool']:
    assert 'apache_beam.runners.worker.sdk_worker_main' in modules
  # ...and none imported Dataflow's runner or any of Google Cloud's clients.
  for process in processes:
    assert held_imports.loaded(process['modules']) == [], process['argv']


def test_held_back_keeps_cloud_clients_out_and_lets_them_in_after():
  code = '''
import sys
from beam_jobs import held_imports
with held_imports.held_back():
  import apache_beam
  try:
    import google.auth
  except ModuleNotFoundError as e:
    print('held:', e.name)
print('loaded:', held_imports.loaded([m for m in sys.modules
                                      if getattr(sys.modules[m], '__file__', None)]))
import google.auth
runner = apache_beam.runners.DataflowRunner()
print(type(runner).__module__, type(runner).__name__, 'google.auth' in sys.modules)
'''
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=REPO), timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines() == [
      'held: google.auth', 'loaded: []',
      'apache_beam.runners.dataflow.dataflow_runner DataflowRunner True']
