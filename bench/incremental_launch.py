"""`--incremental`'s launch step at 10^5 shards on the S3 emulator: list, then judge.

The shards are 64-byte objects (their content does not matter to this step), put straight
into the moto server's store in this process (10^5 uploads over HTTP take more than an hour
on this 2-core machine, and are not what is measured); everything timed goes over HTTP to
that server on 127.0.0.1, as the job talks to a store. Timed as the
launcher runs it: `input_files.expand_patterns` lists the folder, then
`incremental.changed_shards` judges every shard against a state that holds them all (the
nightly run where nothing changed) and against an empty one (the first run). s3fs's
listing cache is off, so nothing is answered from what an earlier call saw. The target
(issue 41): under 2 minutes at 10^5 shards.

  python -m bench.incremental_launch [--shards 100000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time

from tests import emulators
from transforms.output import incremental
from transforms.inputs import input_files

GOAL_SECONDS = 120.0


@contextlib.contextmanager
def _s3_server():
  """moto's S3 server on 127.0.0.1, in this process; yields its URL and its store."""
  from moto.server import ThreadedMotoServer  # pylint: disable=import-outside-toplevel
  from moto.s3.models import s3_backends  # pylint: disable=import-outside-toplevel
  logging.getLogger('werkzeug').setLevel(logging.ERROR)
  port = emulators.free_port()
  server = ThreadedMotoServer(ip_address='127.0.0.1', port=port, verbose=False)
  server.start()
  try:
    yield f'http://127.0.0.1:{port}', s3_backends['123456789012']['aws']
  finally:
    server.stop()


def measure(s3_url: str, store, shards: int) -> dict:
  emulators.s3_client(s3_url).mkdir('launch')
  started = time.perf_counter()
  for i in range(shards):
    store.put_object('launch', f'in/data.tfrecord-{i:06d}-of-{shards:06d}', b'x' * 64)
  filled = time.perf_counter() - started
  options = {'s3': {'key': emulators.S3_KEY, 'secret': emulators.S3_SECRET,
                    'use_listings_cache': False, 'skip_instance_cache': True,
                    'client_kwargs': {'endpoint_url': s3_url}}}
  started = time.perf_counter()
  found = input_files.expand_patterns(['s3://launch/in'], options)
  listed = time.perf_counter() - started
  assert len(found) == shards, (len(found), shards)
  started = time.perf_counter()
  first = incremental.changed_shards(found, {'shards': {}, 'settings': {}}, {}, options)
  judged_new = time.perf_counter() - started
  state = {'shards': dict(first), 'settings': {}}
  started = time.perf_counter()
  again = incremental.changed_shards(found, state, {}, options)
  judged_same = time.perf_counter() - started
  assert len(first) == shards and not again
  launch = listed + judged_same
  return {'shards': shards, 'fill_seconds': round(filled, 1),
          'listing_seconds': round(listed, 2), 'judge_first_run_seconds': round(judged_new, 2),
          'judge_unchanged_seconds': round(judged_same, 2),
          'launch_seconds': round(launch, 2), 'goal_seconds': GOAL_SECONDS,
          'met': launch < GOAL_SECONDS}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m bench.incremental_launch',
                                   description=__doc__)
  parser.add_argument('--shards', type=int, default=100_000)
  args = parser.parse_args(argv)
  with _s3_server() as (s3_url, store):
    result = measure(s3_url, store, args.shards)
  print(json.dumps(result))
  print(f"  {'met ' if result['met'] else 'MISS'} --incremental launch at "
        f"{result['shards']:,} S3 shards (list + judge){'':<8} "
        f"{result['launch_seconds']:8.2f} s (goal < {GOAL_SECONDS:.0f} s)")
  return 0 if result['met'] else 1


if __name__ == '__main__':
  raise SystemExit(main())
