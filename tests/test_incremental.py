"""--incremental: scheduled re-runs process only new or changed shards."""

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np

from tests import emulators
from tests import fixtures
from tests import outputs
from tests.conftest import REPO
from transforms.output import incremental
from transforms.inputs import input_files


def _shard(folder, name, photos):
  fixtures.write_tfrecord(str(folder / name), [fixtures.example({
      'image': fixtures.bytes_feature(fixtures.serialized_tensor(p))}) for p in photos])


def _state(out):
  return json.load(open(out / '_unrecord_state.json'))['shards']


def _snapshot(out):
  return {n: (os.stat(out / n).st_mtime_ns, open(out / n, 'rb').read())
          for n in os.listdir(out) if n.endswith('.png')}


def _check_manifest(out):
  rows = outputs.manifest_rows(out)
  assert {r['path'] for r in rows} == {n for n in os.listdir(out) if n.endswith('.png')}
  return rows


def _run(unrecord, src, out, *extra):
  result = unrecord('export', '--input', str(src), '--output', str(out), '--incremental',
                    *extra)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.load(open(out / '_report.json'))


def test_new_changed_and_unchanged_shards(unrecord, tmp_path):
  src, out = tmp_path / 'src', tmp_path / 'out'
  src.mkdir()
  a = [fixtures.photo(i, 12, 12) for i in range(3)]
  _shard(src, 'a.tfrecord', a)
  _shard(src, 'b.tfrecord', [fixtures.photo(i + 3, 12, 12) for i in range(2)])
  report = _run(unrecord, src, out)
  assert report['written'] == 5 and len(_state(out)) == 2
  first = _snapshot(out)

  _shard(src, 'c.tfrecord', [fixtures.photo(9, 12, 12)])  # a new shard
  report = _run(unrecord, src, out)
  assert report['written'] == 1 and report['incremental']['shards_processed'] == 1
  after_new = _snapshot(out)
  assert {n: after_new[n] for n in first} == first  # the others were not touched
  assert set(after_new) - set(first) == {'c-000000.png'}
  assert len(_state(out)) == 3 and len(_check_manifest(out)) == 6

  changed = [fixtures.photo(20 + i, 12, 12) for i in range(2)]  # a shorter, different a
  time.sleep(0.01)
  _shard(src, 'a.tfrecord', changed)
  report = _run(unrecord, src, out)
  assert report['written'] == 2 and report['incremental']['stale_images_removed'] == 1
  assert not (out / 'a-000002.png').exists()
  for i, photo in enumerate(changed):
    pixels = cv2.cvtColor(cv2.imread(str(out / f'a-{i:06d}.png')), cv2.COLOR_BGR2RGB)
    assert np.array_equal(pixels, photo)
  rows = _check_manifest(out)
  assert len(rows) == 5 and {r['source'] for r in rows} == {
      str(src / n) for n in ('a.tfrecord', 'b.tfrecord', 'c.tfrecord')}

  before = _snapshot(out)
  manifest = outputs.manifest_bytes(out)
  report = _run(unrecord, src, out)  # nothing changed
  assert report['written'] == 0 and _snapshot(out) == before
  assert outputs.manifest_bytes(out) == manifest
  assert (out / '_SUCCESS').exists()


# The killed run: the job as the library runs it, with a decoder that hangs on one marked
# record, so the run is certain to be part-way (it cannot pass that record) when killed.
_KILLED_RUN = """
import dataclasses, sys
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
import transforms as unrecord
request = unrecord.Request(input=(sys.argv[1],), output=sys.argv[2], incremental=True,
                           png_encoder='opencv', reencode=True)
with unrecord.claim_root(request.output) as claim:
  plan = unrecord.plan_export(request)
  config = dataclasses.replace(plan.config, image=dataclasses.replace(
      plan.config.image, decoder='tests.crashing_decoder:decode'))
  claim.start(plan.identity)
  with beam.Pipeline(options=PipelineOptions(['--runner', 'FnApiRunner'])) as pipeline:
    _ = pipeline | unrecord.ExportImages(config)
"""
HANGS_AT = 700


def _png_shard(folder, name, count):
  payloads = []
  for i in range(count):
    png = fixtures.encode_png(fixtures.photo(i % 7, 32, 32))
    if i == HANGS_AT:
      png += b'HANG-ME'  # after IEND: still the same PNG to any other decoder
    payloads.append(fixtures.example({'image': fixtures.bytes_feature(png)}))
  fixtures.write_tfrecord(str(folder / name), payloads)


def test_a_run_killed_part_way_is_redone_by_the_next(unrecord, tmp_path):
  src, out = tmp_path / 'src', tmp_path / 'out'
  src.mkdir()
  settings = ('--png_encoder', 'opencv', '--reencode')  # the settings of every run below
  _png_shard(src, 'small.tfrecord', 1)
  _run(unrecord, src, out, *settings)
  state = _state(out)
  _png_shard(src, 'big.tfrecord', 1500)
  job = subprocess.Popen([sys.executable, '-c', _KILLED_RUN, str(src), str(out)], cwd=REPO,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
  deadline = time.time() + 120
  while time.time() < deadline and not any(n.startswith('big-') for n in os.listdir(out)):
    assert job.poll() is None, 'the run ended before it wrote an image'
    time.sleep(0.02)
  # Record HANGS_AT holds the run (its decoder sleeps): no image from there on can exist.
  os.killpg(job.pid, signal.SIGKILL)
  job.wait()
  partial = [n for n in os.listdir(out) if n.startswith('big-')]
  assert 0 < len(partial) <= HANGS_AT
  assert _state(out) == state  # the killed run did not record the big shard
  report = _run(unrecord, src, out, *settings)
  assert report['incremental']['shards_processed'] == 1  # only the unfinished shard
  assert report['written'] == 1500
  assert len(_state(out)) == 2 and len(_check_manifest(out)) == 1501



def _put_shards(s3, folder, photos):
  for name, shard in photos.items():
    _shard(folder, name, shard)
    s3.put(str(folder / name), f'nightly/in/{name}')


def test_an_object_store_shard_changed_in_place_is_redone(tmp_path):
  """--incremental on S3 inputs: the state holds each shard's ETag, a run with nothing
  changed writes nothing, and a shard rewritten with the same size is seen and redone."""
  out = tmp_path / 'out'
  photos = {name: [fixtures.photo(i + k, 16, 16) for i in range(2)]
            for k, name in enumerate(('a.tfrecord', 'b.tfrecord', 'c.tfrecord'))}
  with emulators.s3_server() as s3_url:
    s3 = emulators.s3_client(s3_url)
    s3.mkdir('nightly')
    _put_shards(s3, tmp_path, photos)

    def run():
      result = subprocess.run(
          [sys.executable, '-m', 'beam_jobs.cli', 'export', '--input', 's3://nightly/in',
           '--output', str(out), '--incremental', '--quiet'], cwd=REPO,
          env=dict(os.environ, **emulators.s3_env(s3_url)), capture_output=True,
          text=True, timeout=300)
      assert result.returncode == 0, result.stderr[-3000:]
      return json.load(open(out / '_report.json'))

    report = run()
    assert report['written'] == 6
    assert {url: fp['etag'] for url, fp in _state(out).items()} == {
        f's3://nightly/in/{n}': s3.info(f'nightly/in/{n}')['ETag'].strip('"') for n in photos}
    first = _snapshot(out)
    report = run()
    assert report['written'] == 0 and report['incremental']['shards_processed'] == 0
    assert _snapshot(out) == first

    changed = [fixtures.photo(30 + i, 16, 16) for i in range(2)]
    size = os.path.getsize(tmp_path / 'b.tfrecord')
    _put_shards(s3, tmp_path, {'b.tfrecord': changed})
    assert os.path.getsize(tmp_path / 'b.tfrecord') == size
    report = run()
    assert report['written'] == 2 and report['incremental']['shards_processed'] == 1
  after = _snapshot(out)
  for i, photo in enumerate(changed):
    pixels = cv2.cvtColor(cv2.imread(str(out / f'b-{i:06d}.png')), cv2.COLOR_BGR2RGB)
    assert np.array_equal(pixels, photo)
  assert {n: v for n, v in after.items() if not n.startswith('b-')} == {
      n: v for n, v in first.items() if not n.startswith('b-')}
  assert len(_check_manifest(out)) == 6 and (out / '_SUCCESS').exists()


def test_fingerprints_come_from_the_listing_with_no_request_a_shard(tmp_path):
  """The launch's serial step at 10^5 shards (docs/scale.md): judging the shards asks the
  store nothing once they are listed, even with s3fs's listing cache off (before, one
  HEAD a shard, one after another)."""
  with emulators.s3_server() as s3_url, emulators.FaultyProxy(s3_url, 'pass') as proxy:
    s3 = emulators.s3_client(s3_url)
    s3.mkdir('nightly')
    _put_shards(s3, tmp_path, {f'{i}.tfrecord': [fixtures.photo(i, 8, 8)] for i in range(5)})
    options = {'s3': {'key': emulators.S3_KEY, 'secret': emulators.S3_SECRET,
                      'use_listings_cache': False, 'skip_instance_cache': True,
                      'client_kwargs': {'endpoint_url': proxy.url}}}
    found = input_files.expand_patterns(['s3://nightly/in'], options)
    assert len(found) == 5 and all(dict(f.checksums).get('etag') for f in found)
    asked = len(proxy.log)
    changed = incremental.changed_shards(found, {'shards': {}, 'settings': {}}, {}, options)
    assert len(proxy.log) == asked, proxy.log[asked:]
    assert [url for url, _ in changed] == [f.url for f in found]
    # The same fingerprints as the store's own answer for each object.
    assert changed == [(f.url, incremental.fingerprint(f.url, options)) for f in found]
    assert len(proxy.log) == asked + 5
