"""Shards against files: MNIST-sized images to files, `--pack tar` and `--pack parquet`,
on local disk and on the S3 emulator.

The 28x28 gray set of case (c) (bench/data.py), sized as bench.scale sizes it (a size
under one shard is the first records of its first shard; above the set, the set linked
as many times as it needs). Each export runs as a user runs it (bench.measure) and is
checked: its manifest holds a row per image, and a shard output's `shardindex.json`
counts every image. Reported per run: wall, images/s, objects written (every object
under the root, unrecord's own `_*` files among them), bytes under the root and the
launcher's peak RSS; on the S3 emulator also the requests that reached the store, through
a tests.emulators.FaultyProxy in 'pass' mode: PUTs (PUT and POST) and LISTs (a GET of the
bucket with `list-type`), each per image.

Then what an object store would see at 10^6 images, computed, not measured: the S3
run's PUTs per image object (an image, or a shard: one PUT, or a multipart upload's
several) times the image objects the local run wrote (measured when `--local` is 10^6,
else scaled linearly), plus the run's own files' PUTs and its LISTs as measured (they do
not grow with the images), and the list pages (1,000 keys each) a reader needs to list
the root. The S3 run's default, 15,000 images, is one input file of the local runs,
so its shard is the size of theirs.

  python -m bench.shards [--local 1000000] [--s3 15000] [--packs files,tar,parquet]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Dict, List

from bench import data as data_lib
from bench import measure
from bench import scale
from tests import emulators

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, 'docs', 'shards.md')
BEGIN, END = '<!-- shards-bench:begin -->', '<!-- shards-bench:end -->'
MILLION = 10 ** 6
BUCKET = 'shards-bench'


def _is_own(relative: str) -> bool:
  """unrecord's own files (`_manifest/`, `_report.json`, `shardindex.json`...), not
  images or shards."""
  return relative.startswith('_') or '/_' in relative or relative.endswith(
      'shardindex.json')


def _objects(output: str) -> Dict[str, int]:
  """Objects, image objects (images or shards) and bytes under a local root."""
  objects = images = size = 0
  for folder, _, names in os.walk(output):
    for name in names:
      path = os.path.join(folder, name)
      objects += 1
      images += not _is_own(os.path.relpath(path, output))
      size += os.path.getsize(path)
  return {'objects': objects, 'image_objects': images, 'bytes': size}


def _check(read, images: int, pack: str) -> None:
  """The manifest has a row per image; a shard index counts them all."""
  parts = json.loads(read('_manifest/_parts.json'))
  if parts['rows'] != images:
    raise AssertionError(f'{pack}: the manifest has {parts["rows"]} rows for {images} '
                         'images')
  if pack != 'files':
    index = json.loads(read('shardindex.json'))
    counted = sum(e['nsamples'] for e in index['shardlist'])
    if counted != images:
      raise AssertionError(f'{pack}: shardindex.json counts {counted} of {images}')


def _command(dataset: data_lib.Dataset, output: str, pack: str) -> List[str]:
  return [sys.executable, '-m', 'beam_jobs.cli', 'export', '--input', dataset.folder,
          '--output', output, '--quiet', '--overwrite', '--pack', pack]


def _row(store: str, pack: str, images: int, measured: measure.Measurement,
         found: Dict[str, int]) -> Dict:
  return {'store': store, 'pack': pack, 'images': images, 'measured': True,
          'wall_seconds': round(measured.wall_seconds, 2),
          'images_per_second': round(images / measured.wall_seconds),
          'launcher_peak_mb': round(measured.launcher_peak / 2 ** 20), **found}


def run_local(dataset: data_lib.Dataset, pack: str, scratch: str) -> Dict:
  output = os.path.join(scratch, f'shards-bench-{pack}')
  shutil.rmtree(output, ignore_errors=True)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=ROOT)
  measured = measure.run(_command(dataset, output, pack), env=env, cwd=ROOT, timeout=3600)

  def read(name):
    with open(os.path.join(output, name), 'rb') as f:
      return f.read()
  _check(read, dataset.count, pack)
  row = _row('local', pack, dataset.count, measured, _objects(output))
  shutil.rmtree(output, ignore_errors=True)
  return row


def _requests(log, prefix: str) -> Dict[str, int]:
  """The requests of a run, its PUTs split into those of image objects (images or
  shards; a multipart upload's several) and those of unrecord's own files."""
  puts = [path.split('?')[0] for method, path in log if method in ('PUT', 'POST')]
  key = lambda path: path.split(f'/{prefix}/', 1)[-1]
  own = sum(_is_own(key(path)) for path in puts)
  lists = sum(method == 'GET' and 'list-type' in path for method, path in log)
  return {'puts': len(puts), 'image_puts': len(puts) - own, 'own_puts': own,
          'lists': lists, 'other_requests': len(log) - len(puts) - lists,
          'requests': len(log)}


def run_s3(dataset: data_lib.Dataset, pack: str, endpoint: str) -> Dict:
  s3 = emulators.s3_client(endpoint)
  prefix = f'{BUCKET}/{pack}'
  with emulators.FaultyProxy(endpoint, mode='pass') as proxy:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=ROOT,
               **emulators.s3_env(proxy.url))
    for key in ('http_proxy', 'https_proxy', 'HTTP_PROXY', 'HTTPS_PROXY'):
      env.pop(key, None)  # the store is on 127.0.0.1
    measured = measure.run(_command(dataset, f's3://{prefix}', pack), env=env, cwd=ROOT,
                           timeout=3600)
    counted = _requests(list(proxy.log), prefix)
  _check(lambda name: s3.cat_file(f'{prefix}/{name}'), dataset.count, pack)
  found = s3.find(prefix, detail=True)
  row = _row('s3', pack, dataset.count, measured, {
      'objects': len(found), 'bytes': sum(i['size'] for i in found.values()),
      'image_objects': sum(not _is_own(p.split(f'{prefix}/', 1)[1]) for p in found)})
  row.update(counted)
  row['puts_per_image'] = round(counted['puts'] / dataset.count, 4)
  row['lists_per_image'] = round(counted['lists'] / dataset.count, 6)
  s3.rm(prefix, recursive=True)
  return row


def per_million(local: List[Dict], stored: List[Dict]) -> List[Dict]:
  """Requests at 10^6 images on a store, computed: the store run's PUTs per image
  object (an image, or a shard: one PUT, or a multipart upload's) times the image
  objects the local run wrote, scaled linearly to 10^6 images; plus the run's own
  files' PUTs and its LISTs as measured (neither grows with the images); plus the
  list pages (1,000 keys each) that reading the root back takes."""
  by_pack = {r['pack']: r for r in local}
  found = []
  for row in stored:
    base = by_pack.get(row['pack'])
    if base is None or not row['image_objects']:
      continue
    objects = base['image_objects'] * MILLION / base['images']
    puts = row['image_puts'] / row['image_objects'] * objects + row['own_puts']
    own_objects = row['objects'] - row['image_objects']
    found.append({
        'store': 's3', 'pack': row['pack'], 'images': MILLION, 'measured': False,
        'objects': round(objects) + own_objects,
        'objects_from': (f'{base["images"]:,} images measured locally' +
                         ('' if base['images'] == MILLION else ', scaled to 10^6')),
        'puts': round(puts), 'lists': row['lists'],
        'list_pages_to_read_back': -(-(round(objects) + own_objects) // 1000)})
  files = next((r for r in found if r['pack'] == 'files'), None)
  for row in found:
    if files is not None and row['puts']:
      row['put_ratio_vs_files'] = round(files['puts'] / row['puts'], 1)
  return found


def markdown(rows: List[Dict], million: List[Dict]) -> str:
  lines = [BEGIN, '', '| store | output | images | wall s | images/s | objects | MB | '
           'PUTs/image | LISTs/image |', '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["store"]} | {r["pack"]} | {r["images"]:,} | {r["wall_seconds"]} | '
                 f'{r["images_per_second"]:,} | {r["objects"]:,} | '
                 f'{r["bytes"] / 1e6:,.1f} | {r.get("puts_per_image", "-")} | '
                 f'{r.get("lists_per_image", "-")} |')
  local = next((r['images'] for r in rows if r['store'] == 'local'), None)
  lines += ['', 'On an object store, per 10^6 images, computed: the S3 rows\' PUTs per '
            'image object (an image or a shard) times the image objects of the local run '
            f'at {local:,} images' if local else 'On an object store, per 10^6 images, '
            'computed', '(scaled to 10^6), plus their own files\' PUTs and the job\'s '
            'LISTs as measured:', '',
            '| output | objects | PUTs | LISTs (the job) | list pages to read it back | '
            'PUTs vs files |', '|---|---|---|---|---|---|']
  for r in million:
    lines.append(f'| {r["pack"]} | {r["objects"]:,} | {r["puts"]:,} | {r["lists"]:,} | '
                 f'{r["list_pages_to_read_back"]:,} | '
                 + ('1' if r['pack'] == 'files'
                    else f'1/{r.get("put_ratio_vs_files", "-"):,}') + ' |')
  lines += ['', END]
  return '\n'.join(lines)


def update_docs(rows: List[Dict], million: List[Dict], path: str = DOCS) -> None:
  with open(path, encoding='utf-8') as f:
    text = f.read()
  if BEGIN not in text or END not in text:
    raise SystemExit(f'bench.shards: {path} has no {BEGIN} ... {END} section')
  text = text[:text.index(BEGIN)] + markdown(rows, million) + text[text.index(END) + len(END):]
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m bench.shards', description=__doc__)
  parser.add_argument('--data', default=os.path.join(ROOT, 'bench', 'data'))
  parser.add_argument('--scratch', default='/dev/shm' if os.path.isdir('/dev/shm')
                      else '/tmp')
  parser.add_argument('--local', type=int, default=MILLION,
                      help='images of the local runs (0: none)')
  parser.add_argument('--s3', type=int, default=15_000,
                      help='images of the S3-emulator runs (0: none); the default is '
                      'one input file of the local runs, so its shard is theirs')
  parser.add_argument('--packs', default='files,tar,parquet')
  parser.add_argument('--no_docs', action='store_true')
  parser.add_argument('--out', default=os.path.join(ROOT, 'bench', 'out', 'shards.json'))
  args = parser.parse_args(argv)
  gray = data_lib.build(args.data, count=4000, gray_count=60000, only='c')['c']
  links = os.path.join(args.scratch, 'unrecord-shards-links')
  packs = args.packs.split(',')
  rows: List[Dict] = []
  print('bench: shards (28x28 gray -> PNG: files, tar, parquet)', flush=True)
  if args.local:
    dataset = scale._sized(gray, os.path.join(links, 'local'), args.local)  # pylint: disable=protected-access
    for pack in packs:
      rows.append(run_local(dataset, pack, args.scratch))
      _show(rows[-1])
  if args.s3:
    dataset = scale._sized(gray, os.path.join(links, 's3'), args.s3)  # pylint: disable=protected-access
    with emulators.s3_server() as endpoint:
      emulators.s3_client(endpoint).mkdir(BUCKET)
      for pack in packs:
        rows.append(run_s3(dataset, pack, endpoint))
        _show(rows[-1])
  million = per_million([r for r in rows if r['store'] == 'local'],
                        [r for r in rows if r['store'] == 's3'])
  for r in million:
    print(f'  per 10^6 images on a store, {r["pack"]:<7} (computed): {r["objects"]:>9,} '
          f'objects, {r["puts"]:>9,} PUTs, {r["lists"]:>4,} LISTs, '
          f'{r["list_pages_to_read_back"]:,} list pages to read it back'
          + (f', 1/{r["put_ratio_vs_files"]} of the files\' PUTs'
             if 'put_ratio_vs_files' in r else ''), flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  result = {'runs': rows, 'per_million': million}
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=1)
  if not args.no_docs:
    update_docs(rows, million)
  print(json.dumps(result))
  return 0


def _show(r: Dict) -> None:
  requests = (f', {r["puts"]:,} PUTs ({r["puts_per_image"]}/image; {r["own_puts"]} of '
              f'own files), {r["lists"]:,} LISTs'
              if 'puts' in r else '')
  print(f'  {r["store"]:<5} {r["pack"]:<7} {r["images"]:>9,} images {r["wall_seconds"]:7.1f} s, '
        f'{r["images_per_second"]:6,} img/s, {r["objects"]:,} objects, '
        f'{r["bytes"] / 1e6:,.1f} MB, launcher {r["launcher_peak_mb"]} MB{requests}',
        flush=True)


if __name__ == '__main__':
  sys.exit(main())
