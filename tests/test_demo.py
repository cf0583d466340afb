"""`make demo`'s program as `make demo` runs it, with only what `.[demo]` installs: every
export succeeds and the contact sheet shows the written files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO
from tests.test_export_job import OFFLINE
from transforms import report


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
    rows = [json.loads(line) for line in open(root / '_manifest.jsonl')]
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
