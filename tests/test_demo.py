"""`make demo`'s program as `make demo` runs it, with only what `.[demo]` installs: every
export succeeds and the contact sheet shows the written files."""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata

import numpy as np
import pytest
from PIL import Image

from tests import outputs
from tests.conftest import REPO
from tests.test_export_job import OFFLINE
from transforms.output import report


@pytest.fixture(scope='module')
def demo_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('demo')
  blockers = root / 'blockers'
  for name in ('tensorflow', 'tensorflow_datasets', 'airflow'):  # not in `.[demo]`
    (blockers / name).mkdir(parents=True)
    (blockers / name / '__init__.py').write_text(
        f"raise ImportError('{name} is blocked: the demo must not need it')\n")
  folder = root / 'demo_out'
  result = subprocess.run(
      [sys.executable, '-m', 'beam_jobs.demo', '--folder', str(folder)], cwd=REPO,
      capture_output=True, text=True, timeout=600,
      env=dict(os.environ, PYTHONPATH=str(blockers), **OFFLINE))
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'Look at: {folder / "contact_sheet.png"}' in result.stdout
  return folder


def test_demo_exports_every_sample_and_draws_its_own_output(demo_folder):
  first_paths = []
  for name in ('tensors', 'raw', 'encoded', 'batched'):
    root = demo_folder / 'images' / name
    assert (root / '_SUCCESS').exists(), name
    rows = outputs.manifest_rows(root)
    assert len(rows) >= 20
    first_paths.append(root / rows[0]['path'])
  image = np.asarray(Image.open(demo_folder / 'contact_sheet.png').convert('RGB')).astype(int)
  assert image.shape == (4 * (128 + 14 + 4) + 4, 8 * (128 + 4) + 4, 3)  # 4 rows of 8
  # Each row starts with its export's first written image, drawn from the file.
  for row, path in enumerate(first_paths):
    pixels = report.decode_written(path.read_bytes())
    top = 4 + row * (128 + 14 + 4)
    cell = image[top:top + 128, 4:4 + 128]
    shown = cell[(128 - pixels.shape[0]) // 2:, (128 - pixels.shape[1]) // 2:][
        :pixels.shape[0], :pixels.shape[1]]
    assert np.abs(shown - pixels[:, :, :3]).mean() < 2, path


# The golden test: every file the demo's four exports write, by sha256, against digests
# recorded before a refactor, so a change meant to keep behaviour proves it kept every
# byte. Reports carry the run's times and the folder's path, so those are taken out
# first. The encoders' versions decide the bytes: the `test` extra pins them, and the
# golden file records them, so a failure after a deliberate upgrade says so.
GOLDEN = os.path.join(REPO, 'tests', 'golden', 'demo_sha256.json')
_RUN_TIMES = ('seconds', 'started', 'finished', 'images_per_second', 'work')
GOLDEN_LIBRARIES = ('fpng', 'opencv-python-headless', 'pillow', 'numpy', 'scikit-image')


def output_digests(folder) -> dict:
  """Relative path -> sha256 of each file under `folder`/images, with the run's times
  and `folder`'s own path taken out of the reports and manifests."""
  images = os.path.join(str(folder), 'images')
  digests = {}
  for top, folders, names in os.walk(images):
    if '_logs' in folders:  # the runs' logs: times and Beam's own lines, never the same
      folders.remove('_logs')
    for name in names:
      path = os.path.join(top, name)
      relative = os.path.relpath(path, images)
      if name == '_report.html':  # the page shows the times; its data is _report.json's
        continue
      with open(path, 'rb') as f:
        data = f.read()
      if name == '_report.json':
        report_data = json.loads(data)
        for key in _RUN_TIMES:
          report_data.pop(key)
        report_data['manifest'].pop('seconds_after_work')
        data = json.dumps(report_data, sort_keys=True).encode()
      if name.endswith(('.json', '.jsonl')):
        data = data.replace(str(folder).encode(), b'<folder>')
      digests[relative] = hashlib.sha256(data).hexdigest()
  return dict(sorted(digests.items()))


def library_versions() -> dict:
  return {name: metadata.version(name) for name in GOLDEN_LIBRARIES}


def test_demo_outputs_are_byte_for_byte_the_golden_ones(demo_folder):
  with open(GOLDEN) as f:
    golden = json.load(f)
  assert library_versions() == golden['libraries'], (
      'the encoders are not the versions the golden digests were made with; after '
      'checking the images, record new ones: python -m tests.test_demo --update')
  digests = output_digests(demo_folder)
  assert sorted(digests) == sorted(golden['files'])
  changed = [path for path, digest in digests.items() if golden['files'][path] != digest]
  assert not changed, f'{len(changed)} file(s) differ from the golden run: {changed[:10]}'


if __name__ == '__main__':  # python -m tests.test_demo --update: records the digests
  assert sys.argv[1:] == ['--update'], 'usage: python -m tests.test_demo --update'
  with tempfile.TemporaryDirectory() as scratch:
    out = os.path.join(scratch, 'demo_out')
    subprocess.run([sys.executable, '-m', 'beam_jobs.demo', '--folder', out], cwd=REPO,
                   check=True, capture_output=True)
    with open(GOLDEN, 'w') as f:
      json.dump({'libraries': library_versions(), 'files': output_digests(out)}, f,
                indent=1, sort_keys=True)
      f.write('\n')
