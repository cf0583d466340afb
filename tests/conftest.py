import os
import subprocess
import sys
import textwrap

import pytest

# TensorFlow's C++ logging is noise in test output.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# gcsfs reads this when imported: against the GCS emulator its bucket-type probe stalls
# about 60 s per bucket unless it is off. Set before anything can import gcsfs.
os.environ['GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT'] = 'false'

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


_TFDS_BUILDER = textwrap.dedent('''
    import sys
    import numpy as np
    import tensorflow_datasets as tfds
    sys.path.insert(0, {repo!r})
    from tests import fixtures

    class TinyPhotos(tfds.core.GeneratorBasedBuilder):
      VERSION = tfds.core.Version('1.0.0')

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({{
            'image': tfds.features.Image(shape=(24, 20, 3)),
            'label': tfds.features.ClassLabel(names=['astronaut', 'coffee', 'chelsea']),
        }}))

      def _split_generators(self, dl_manager):
        return {{'train': self._generate_examples(6), 'test': self._generate_examples(3)}}

      def _generate_examples(self, n):
        for i in range(n):
          yield f'k{{i}}', {{'image': fixtures.photo(i, 24, 20), 'label': i % 3}}

    TinyPhotos(data_dir=sys.argv[1]).download_and_prepare()
''')



@pytest.fixture(scope='session')
def tfds_dataset(tmp_path_factory):
  """A real TFDS-prepared folder (shards, dataset_info.json, label.labels.txt)."""
  root = str(tmp_path_factory.mktemp('tfds'))
  subprocess.run([sys.executable, '-c', _TFDS_BUILDER.format(repo=REPO), root],
                 check=True, capture_output=True, timeout=300)
  return os.path.join(root, 'tiny_photos', '1.0.0')
