"""Every command in README.md and docs/*.md, run as written.

Each `sh`, `bash`, `console` or `python` block of a page carries, on the line before it,
an HTML comment saying how it is tested (docs/README.md, "Every command here is run by a
test"):

  <!-- doc-test: run -->                    run here, with bash (set -e -o pipefail)
  <!-- doc-test: run; creates: PATH ... -->  the same, and each PATH exists afterwards
  <!-- doc-test: by tests/test_x.py -->      run by that test, which names this page
  <!-- doc-test: skip: REASON -->            not run, for the reason given

A page's `run` blocks run in order in one fresh folder, as a user following the page
would: it holds `demo_out/records/` (what `make demo` writes), `demo_out/images/encoded/`
(the demo's class-folder export), and the recipes' inputs (`preds/`, `feats.tfrecord`,
`seg/`, `depth.tfrecord`, `coco-train.tfrecord`, written by TensorFlow). All of it is
built once for the module and copied. `unrecord` and `python` are this checkout's.
`gs://` and `s3://` go to the GCS emulator and moto on 127.0.0.1, each with a bucket
`my-bucket` holding the demo's records under `records/`; `http://minio:9000` in a block is
replaced by moto's address, as a user puts their store's; BUCKET, PROJECT, REGION and
IMAGE are set for the Dataflow dry run. Each block must exit 0, print no traceback, and
leave `_SUCCESS` in every `--output` its export lines name (a `--dry_run` is exempt).

And the pages' relative links lead to files and headings that exist.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
from typing import Dict, List, Optional

import numpy as np
import pytest

from tests import emulators
from tests import fixtures
from tests.conftest import REPO
from tests.test_export_job import OFFLINE

SHELLS = ('sh', 'bash', 'console')
LANGUAGES = SHELLS + ('python',)
BUCKET = 'my-bucket'
MINIO = 'http://minio:9000'
DATAFLOW = {'BUCKET': BUCKET, 'PROJECT': 'my-project', 'REGION': 'europe-west1',
            'IMAGE': 'europe-west1-docker.pkg.dev/my-project/images/unrecord:v1'}
_FENCE = re.compile(r'^```(\S*)[^\n]*\n(.*?)^```[ \t]*$', re.S | re.M)
_MARKER = re.compile(r'^<!-- doc-test: (run|by|skip)(.*?) -->$')


@dataclasses.dataclass
class Block:
  page: str  # relative to the repository: README.md, docs/export.md
  line: int
  language: str
  text: str
  marker: Optional[str]  # the comment's text, or None
  kind: Optional[str] = None  # run, by, skip
  argument: str = ''

  def __str__(self):
    return f'{self.page}:{self.line}'


def pages() -> List[str]:
  return ['README.md'] + sorted(os.path.relpath(p, REPO)
                                for p in glob.glob(os.path.join(REPO, 'docs', '*.md')))


def blocks(page: str) -> List[Block]:
  """Every fenced block of `page`, with the marker on the line before it."""
  text = open(os.path.join(REPO, page), encoding='utf-8').read()
  found = []
  for match in _FENCE.finditer(text):
    before = text[:match.start()].rstrip('\n').rsplit('\n', 1)[-1]
    block = Block(page, text.count('\n', 0, match.start()) + 1, match.group(1),
                  match.group(2), before if before.startswith('<!-- doc-test') else None)
    marker = _MARKER.match(before)
    if marker:
      block.kind, block.argument = marker.group(1), marker.group(2).strip()
    found.append(block)
  return found


def test_every_command_block_says_how_it_is_tested():
  counts = {'run': 0, 'by': 0, 'skip': 0}
  for page in pages():
    for block in blocks(page):
      if block.language not in LANGUAGES:
        assert block.marker is None, f'{block}: a {block.language!r} block is not run'
        continue
      assert block.kind, f'{block}: a {block.language} block with no doc-test marker'
      counts[block.kind] += 1
      if block.kind == 'run':
        assert block.language in SHELLS, f'{block}: only shell blocks run here'
        assert block.argument in ('',) or block.argument.startswith('; creates: '), block
      elif block.kind == 'skip':
        reason = block.argument.lstrip(':').strip()
        assert block.argument.startswith(':') and len(reason) > 10, f'{block}: no reason'
      else:
        test = os.path.join(REPO, block.argument)
        assert re.fullmatch(r'tests/test_\w+\.py', block.argument) and os.path.exists(
            test), f'{block}: no such test: {block.argument!r}'
        assert block.page in open(test, encoding='utf-8').read(), (
            f'{block}: {block.argument} does not name {block.page}')
  # Most commands run here; the rest are few and each has its test or reason.
  assert counts['run'] > counts['by'] + counts['skip'] and counts['skip'] <= 10, counts


# -- the folder a page's commands run in -------------------------------------------------

def _recipe_inputs(folder: str) -> None:
  """The inputs docs/export.md's recipes name, of the kind each recipe is for."""
  photos = [fixtures.photo(i, 32, 24) for i in range(3)]
  os.makedirs(os.path.join(folder, 'preds'))
  for shard in range(2):  # model outputs in [-1,1]
    fixtures.write_tfrecord(os.path.join(folder, 'preds', f'preds-{shard}.tfrecord'), [
        fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(
            (p / 127.5 - 1).astype(np.float32)))}) for p in photos])
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  fixtures.write_tfrecord(os.path.join(folder, 'feats.tfrecord'), [
      fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(
          ((p / 255 - mean) / std).astype(np.float32)))}) for p in photos])
  os.makedirs(os.path.join(folder, 'seg'))
  fixtures.write_tfrecord(os.path.join(folder, 'seg', 'seg-train.tfrecord'), [
      fixtures.example({
          'image/encoded': fixtures.bytes_feature(fixtures.encode_jpeg(p)),
          'image/segmentation/class/encoded': fixtures.bytes_feature(
              fixtures.encode_png((p[:, :, 0] > 127).astype(np.uint8)[:, :, None]))})
      for p in photos])
  fixtures.write_tfrecord(os.path.join(folder, 'depth.tfrecord'), [
      fixtures.example({'depth': fixtures.bytes_feature(fixtures.serialized_tensor(
          fixtures.photo_16bit(32, 24)))}) for _ in range(3)])
  fixtures.write_tfrecord(os.path.join(folder, 'coco-train.tfrecord'), [
      fixtures.example({
          'image/encoded': fixtures.bytes_feature(fixtures.encode_jpeg(p)),
          'image/filename': fixtures.bytes_feature(f'{i:012d}.jpg'.encode())})
      for i, p in enumerate(photos)])


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
  """`make demo`'s records and its class-folder export, and the recipes' inputs."""
  from beam_jobs import demo as demo_lib  # pylint: disable=import-outside-toplevel
  folder = str(tmp_path_factory.mktemp('docs-demo'))
  records = os.path.join(folder, 'demo_out', 'records')
  datasets = demo_lib.build_sample(records)
  extra = [a.replace('{records}', records) for a in demo_lib.EXPORTS['encoded']]
  result = subprocess.run(
      [sys.executable, '-m', 'beam_jobs.cli', 'export', '--input', datasets['encoded'],
       '--output', os.path.join(folder, 'demo_out', 'images', 'encoded'), '--quiet', *extra],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=REPO, **OFFLINE))
  assert result.returncode == 0, result.stderr[-3000:]
  _recipe_inputs(folder)
  return folder


@pytest.fixture(scope='module')
def stores(demo):
  """The GCS emulator and moto, each with my-bucket/records/ = the demo's records."""
  records = os.path.join(demo, 'demo_out', 'records')
  with emulators.gcs_server() as gcs_host, emulators.s3_server() as s3_url:
    import gcsfs  # pylint: disable=import-outside-toplevel
    gcs = gcsfs.GCSFileSystem(endpoint_url=gcs_host, token='anon')
    gcs.mkdir(BUCKET)
    gcs.put(records, f'{BUCKET}/records', recursive=True)
    s3 = emulators.s3_client(s3_url)
    s3.mkdir(BUCKET)
    s3.put(records, f'{BUCKET}/records', recursive=True)
    env = dict(emulators.gcs_env(gcs_host), AWS_ACCESS_KEY_ID=emulators.S3_KEY,
               AWS_SECRET_ACCESS_KEY=emulators.S3_SECRET, AWS_DEFAULT_REGION='us-east-1')
    yield {'env': env, 'minio': s3_url, 'gs': gcs, 's3': s3}


def _commands(text: str) -> List[List[str]]:
  """The block's command lines as words, continuation lines joined."""
  joined = text.replace('\\\n', ' ')
  return [shlex.split(line, comments=True) for line in joined.splitlines()
          if line.strip() and not line.lstrip().startswith('#')]


def _outputs(text: str, env: Dict[str, str]) -> List[str]:
  """The --output of every export line that writes one."""
  found = []
  for words in _commands(text):
    if words[:2] == ['unrecord', 'export'] and '--dry_run' not in words:
      found.append(os.path.expandvars(words[words.index('--output') + 1]).rstrip('/'))
  return found


def _exists(path: str, cwd: str, stores) -> bool:
  if path.startswith(('gs://', 's3://')):
    return stores[path[:2]].exists(path.split('://', 1)[1])
  return os.path.exists(os.path.join(cwd, path))


def _run_pages():
  return [page for page in pages() if any(b.kind == 'run' for b in blocks(page))]


@pytest.mark.parametrize('page', _run_pages())
def test_the_commands_of_each_page_run_as_written(page, demo, tmp_path, request):
  cwd = str(tmp_path / 'work')
  shutil.copytree(demo, cwd, symlinks=True)
  runnable = [b for b in blocks(page) if b.kind == 'run']
  needs_stores = any(('gs://' in b.text or 's3://' in b.text) for b in runnable)
  stores = request.getfixturevalue('stores') if needs_stores else None
  env = dict(os.environ, PYTHONPATH=REPO, **OFFLINE, **DATAFLOW,
             no_proxy='127.0.0.1,localhost', NO_PROXY='127.0.0.1,localhost',
             PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
  if stores:
    env.update(stores['env'])
  for block in runnable:
    text = block.text.replace(MINIO, stores['minio']) if stores else block.text
    result = subprocess.run(['bash', '-c', 'set -e -o pipefail\n' + text], cwd=cwd,
                            env=env, capture_output=True, text=True, timeout=300)
    said = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, f'{block} exited {result.returncode}:\n{said}'
    assert 'Traceback' not in result.stdout + result.stderr, f'{block}:\n{said}'
    for output in _outputs(text, env):
      assert _exists(f'{output}/_SUCCESS', cwd, stores), f'{block}: no {output}/_SUCCESS'
    for path in block.argument.replace('; creates:', '').split():
      assert _exists(path, cwd, stores), f'{block}: {path} was not made\n{said}'


def _anchor(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
  return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def test_every_link_between_pages_leads_somewhere():
  """Relative links of README.md and docs/*.md name files that exist, and headings that
  the page linked to has."""
  link = re.compile(r'\]\(([^)\s]+)\)')
  for page in pages():
    text = open(os.path.join(REPO, page), encoding='utf-8').read()
    outside_code = _FENCE.sub('', text)
    for target in link.findall(outside_code):
      if re.match(r'[a-z]+:', target):
        continue
      path, _, anchor = target.partition('#')
      linked = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
      assert os.path.exists(os.path.join(REPO, linked)), f'{page}: {target}'
      if anchor:
        headings = re.findall(r'^#+ (.*)$', open(os.path.join(REPO, linked),
                                                  encoding='utf-8').read(), re.M)
        assert anchor in {_anchor(h) for h in headings}, f'{page}: {target}'
