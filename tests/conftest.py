import os
import subprocess
import sys

import pytest

# TensorFlow's C++ logging is noise in test output.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_unrecord(*args, env=None, timeout=300, check=False):
  """Runs `python -m beam_jobs.cli ARGS` as a user would; returns CompletedProcess."""
  full_env = dict(os.environ)
  full_env.update(env or {})
  result = subprocess.run(
      [sys.executable, '-m', 'beam_jobs.cli', *args], capture_output=True, text=True,
      cwd=REPO, env=full_env, timeout=timeout)
  if check and result.returncode != 0:
    raise AssertionError(f'exit {result.returncode}\nstdout:\n{result.stdout}\n'
                         f'stderr:\n{result.stderr}')
  return result


@pytest.fixture
def unrecord():
  return run_unrecord
