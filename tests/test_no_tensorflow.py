"""The runtime path (read, decode, inspect, a Beam pipeline) never needs TensorFlow."""

import os
import subprocess
import sys
import textwrap

import numpy as np

from tests import fixtures

_SCRIPT = textwrap.dedent('''
    import json, sys
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from beam_jobs import inspect_records
    from transforms import ptransforms
    from transforms.images import decode
    from transforms.inputs import record_ranges

    path = sys.argv[1]
    total = 0
    for ref, payload in record_ranges.read_all([path]):
      for image in decode.decode_record(ref, payload, decode.ImageSpec()):
        total += int(image.pixels.astype('int64').sum())
    assert inspect_records.main(['--input', path, '--json']) == 0

    with beam.Pipeline(options=PipelineOptions(['--runner=FnApiRunner'])) as p:
      records = p | ptransforms.ReadImageRecords([path])
      images = records.records | ptransforms.DecodeImages()
      _ = (images.images | beam.Map(lambda i: int(i.pixels.astype('int64').sum()))
           | beam.combiners.ToList()
           | beam.Map(lambda sums: open(sys.argv[2], 'w').write(str(sum(sums)))))
    assert 'tensorflow' not in sys.modules
    print('TOTAL', total)
''')


def test_read_decode_inspect_and_pipeline_run_where_tensorflow_cannot_import(tmp_path):
  blocker = tmp_path / 'blocker' / 'tensorflow'
  blocker.mkdir(parents=True)
  (blocker / '__init__.py').write_text(
      "raise ImportError('tensorflow is blocked: unrecord must not need it')\n")
  photos = [fixtures.photo(i, 16, 12) for i in range(3)]
  path = fixtures.write_tfrecord(str(tmp_path / 'data.tfrecord'), [
      fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(p))})
      for p in photos])
  env = dict(os.environ, PYTHONPATH=str(tmp_path / 'blocker'))
  result = subprocess.run(
      [sys.executable, '-c', _SCRIPT, path, str(tmp_path / 'pipeline_total')],
      capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  expected = int(sum(p.astype(np.int64).sum() for p in photos))
  assert f'TOTAL {expected}' in result.stdout
  assert (tmp_path / 'pipeline_total').read_text() == str(expected)


def test_the_job_and_its_worker_processes_run_where_tensorflow_cannot_import(tmp_path):
  """Default local run: the launcher and its worker processes all inherit the blocker."""
  blocker = tmp_path / 'blocker' / 'tensorflow'
  blocker.mkdir(parents=True)
  # Leaves a mark on any attempt, so even an import wrapped in try/except is caught.
  (blocker / '__init__.py').write_text(
      "import os\n"
      "open(os.path.join(os.path.dirname(__file__), 'ATTEMPTED'), 'a').write(\n"
      "    str(os.getpid()) + '\\n')\n"
      "raise ImportError('tensorflow is blocked: unrecord must not need it')\n")
  path = fixtures.write_tfrecord(str(tmp_path / 'data.tfrecord'), [
      fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(
          fixtures.photo(i, 16, 12)))}) for i in range(6)])
  env = dict(os.environ, PYTHONPATH=str(tmp_path / 'blocker'))
  result = subprocess.run(
      [sys.executable, '-m', 'beam_jobs.cli', 'export', '--input', path, '--output',
       str(tmp_path / 'out'), '--direct_num_workers', '2'], capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'multi_processing worker(s)' in result.stderr and 'written 6' in result.stderr
  assert not (blocker / 'ATTEMPTED').exists(), 'a process tried to import tensorflow'
