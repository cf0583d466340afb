"""What the job's per-file steps cost on each kind of store: docs/scale.md's unit figures.

  python -m bench.store_units [--files 2000]

For a local folder and for S3 and GCS emulators on 127.0.0.1 (moto and
gcp-storage-emulator, as the tests run them), each holding `--files` small objects:
- listing: `input_files.expand_patterns` of the folder (the job's file listing), per file;
- fingerprint: `incremental.changed_shards` over the listed files (what --incremental
  asks at launch), per file: an object store's checksums come with the listing, so only
  local files are stat'ed (and hashed, when new) one after another;
- commit: `manifest.finish_commit` of that many staged parts (moves and removals), per part.
An emulator answers in well under a millisecond of network, so these are the job's own
costs per request; a real store adds its latency per request (docs/scale.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from tests import emulators
from transforms.inputs import input_files
from transforms.output import incremental
from transforms.output import manifest
from transforms.output import root_files


def _fill(root: root_files.OutputRoot, folder: str, files: int) -> None:
  for i in range(files):
    root.write(f'{folder}/data.tfrecord-{i:05d}-of-{files:05d}', b'x' * 64)


def _per(seconds: float, count: int) -> float:
  return round(seconds / count * 1e6, 1)


def measure(url: str, files: int, storage_options=None) -> dict:
  root = root_files.OutputRoot(url, storage_options)
  _fill(root, 'in', files)
  started = time.perf_counter()
  found = input_files.expand_patterns([root.url_of('in')], storage_options)
  listing = time.perf_counter() - started
  assert len(found) == files, (len(found), files)
  started = time.perf_counter()
  judged = incremental.changed_shards(found, {'shards': {}, 'settings': {}}, {},
                                      storage_options)
  fingerprints = time.perf_counter() - started
  assert len(judged) == files
  parts = [manifest.part_name(i, files, 'jsonl') for i in range(files)]
  for name in parts:
    root.write(f'{manifest.STAGED}/{name}', b'{}\n')
  root.write(manifest.JOURNAL, json.dumps({'format': 'jsonl', 'rows': files, 'parts': [
      {'name': n, 'rows': 1, 'first': None, 'last': None} for n in parts]}).encode())
  started = time.perf_counter()
  manifest.finish_commit(root)
  commit = time.perf_counter() - started
  assert len(manifest.part_files(root)) == files
  assert not root.exists(manifest.STAGED)
  return {'listing_us_per_file': _per(listing, files),
          'fingerprint_us_per_file': _per(fingerprints, files),
          'commit_us_per_part': _per(commit, files)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m bench.store_units', description=__doc__)
  parser.add_argument('--files', type=int, default=2000)
  args = parser.parse_args(argv)
  results = {'files': args.files}
  folder = tempfile.mkdtemp()
  try:
    results['local'] = measure(folder, args.files)
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  with emulators.s3_server() as s3_url:
    options = {'s3': {'key': emulators.S3_KEY, 'secret': emulators.S3_SECRET,
                      'client_kwargs': {'endpoint_url': s3_url}}}
    input_files.filesystem('s3://units', options)[0].mkdir('units')
    results['s3_emulator'] = measure('s3://units/root', args.files, options)
  with emulators.gcs_server() as gcs_url:
    os.environ.update(emulators.gcs_env(gcs_url))
    import gcsfs  # pylint: disable=import-outside-toplevel
    gcsfs.GCSFileSystem(token='anon').mkdir('units')
    results['gcs_emulator'] = measure('gs://units/root', args.files)
  print(json.dumps(results))
  return 0


if __name__ == '__main__':
  sys.exit(main())
