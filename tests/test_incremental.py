"""--incremental: scheduled re-runs process only new or changed shards."""

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np

from tests import fixtures
from tests import outputs
from tests.conftest import REPO


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
