"""`unrecord verify ROOT` and `unrecord export --checksum`, as a scheduler runs them.

Each test exports TensorFlow-written records of real photographs with the real command,
then runs `unrecord verify` on the root (whole, then damaged in one way at a time) and
checks what a scheduler reads: the exit status, the named file and kind of problem, and
the `--json` summary.
"""

import base64
import hashlib
import json
import os
import shutil

import blake3
import google_crc32c
import numpy as np
import pytest

from tests import emulators
from tests import fixtures
from tests import outputs

PHOTOS = [fixtures.photo(i, 32, 28) for i in range(8)]
DIGESTS = {
    'sha256': lambda data: hashlib.sha256(data).hexdigest(),
    'crc32c': lambda data: f'{google_crc32c.value(data):08x}',
    'blake3': lambda data: blake3.blake3(data).hexdigest(),
}


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
  """Two TFRecord shards of photos as float tensors, with ids and labels."""
  folder = tmp_path_factory.mktemp('verify_shards')
  for shard in range(2):
    fixtures.write_tfrecord(str(folder / f'part-{shard}.tfrecord'), [
        fixtures.example({
            'image': fixtures.bytes_feature(fixtures.serialized_tensor(
                (PHOTOS[shard * 4 + i] / 255.0).astype(np.float32))),
            'id': fixtures.bytes_feature(f's{shard}i{i}'.encode()),
            'label': fixtures.int64_feature(i % 2)})
        for i in range(4)])
  return folder


def _export(unrecord, shards, out, *extra, env=None):
  result = unrecord('export', '--input', str(shards), '--output', str(out),
                    '--name_template', '{id}.{ext}', '--quiet', *extra, env=env)
  assert result.returncode == 0, result.stderr[-3000:]


def _verify(unrecord, root, *extra, env=None):
  """(exit status, the --json summary, the text run's stdout, its stderr)."""
  as_json = unrecord('verify', str(root), '--json', '--quiet', *extra, env=env)
  text = unrecord('verify', str(root), *extra, env=env)
  assert as_json.returncode == text.returncode, (as_json.stderr, text.stderr)
  summary = json.loads(as_json.stdout) if as_json.stdout.strip() else None
  return text.returncode, summary, text.stdout, text.stderr


@pytest.fixture(scope='module')
def exported(tmp_path_factory, shards):
  """A whole root per (manifest format, checksum), exported once for the module."""
  from tests.conftest import run_unrecord
  made = {}
  base = tmp_path_factory.mktemp('verify_roots')
  for manifest_format in ('jsonl', 'parquet'):
    for checksum in ('sha256', 'crc32c', 'blake3'):
      out = base / f'{manifest_format}-{checksum}'
      _export(run_unrecord, shards, out, '--manifest_format', manifest_format,
              '--checksum', checksum)
      made[manifest_format, checksum] = out
  return made


@pytest.mark.parametrize('manifest_format', ['jsonl', 'parquet'])
@pytest.mark.parametrize('checksum', ['sha256', 'crc32c', 'blake3'])
def test_a_whole_root_verifies_with_each_checksum(unrecord, exported, manifest_format,
                                                  checksum):
  out = exported[manifest_format, checksum]
  rows = outputs.manifest_rows(out)
  assert len(rows) == len(PHOTOS)
  for row in rows:  # the column named after the algorithm holds the file's digest
    with open(out / row['path'], 'rb') as f:
      data = f.read()
    assert row[checksum] == DIGESTS[checksum](data), row['path']
    assert row['bytes'] == len(data)
    others = [a for a in DIGESTS if a != checksum]
    assert not set(others) & set(row), row  # only its own checksum
  if manifest_format == 'parquet':  # there, the other two are null columns
    import pyarrow.parquet as pq
    table = pq.read_table(_part(out, 'parquet'))
    assert all(table.column(a).null_count == table.num_rows == 8 for a in others)
  code, summary, stdout, stderr = _verify(unrecord, out)
  assert code == 0, stdout + stderr
  assert stdout.startswith(f'unrecord verify: OK: {out}'), stdout
  assert f'8 files' in stdout and f'8 {checksum}' in stdout, stdout
  assert stderr == ''  # not a terminal, and too quick for a periodic line
  assert summary['whole'] is True and summary['problems'] == []
  assert (summary['rows'], summary['files_checked'], summary['parts']) == (8, 8, 1)
  assert summary['checksums'] == {checksum: 8}
  assert summary['files_read'] == 8 and summary['from_store'] == 0
  assert summary['bytes_checked'] == sum(r['bytes'] for r in rows)
  assert summary['success_marker'] is True


def test_sha256_rows_are_the_rows_of_before(exported):
  """The default keeps today's row: `sha256` in its sorted place, no other checksum."""
  part = exported['jsonl', 'sha256'] / '_manifest' / 'part-00000-of-00001.jsonl'
  line = part.read_bytes().splitlines()[0]
  row = json.loads(line)
  assert list(row) == sorted(row) and 'sha256' in row
  assert not {'crc32c', 'blake3'} & set(row)
  assert line == json.dumps(row, separators=(',', ':'), sort_keys=True).encode()


def _damaged(exported, tmp_path, manifest_format='jsonl', checksum='sha256'):
  out = tmp_path / 'root'
  shutil.copytree(exported[manifest_format, checksum], out)
  return out


def _flip_a_byte(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))


def _whole_rows(data):
  """The paths of the JSON lines of `data` that are whole rows."""
  for line in data.splitlines():
    try:
      yield json.loads(line)['path']
    except ValueError:
      continue


def _problems(summary):
  return {(p['kind'], p['path']) for p in summary['problems']}


def _part(out, manifest_format):
  return out / '_manifest' / f'part-00000-of-00001.{manifest_format}'


# Each way of damaging a root: (what is done, the (kind, path) verify must name).
DAMAGE = {
    'missing_file': (lambda out, f: os.remove(out / 's0i1.png'),
                     [('missing_file', 's0i1.png')]),
    'wrong_size': (lambda out, f: open(out / 's1i0.png', 'ab').write(b'\0'),
                   [('wrong_size', 's1i0.png')]),
    'wrong_checksum': (lambda out, f: _flip_a_byte(out / 's1i3.png'),
                       [('wrong_checksum', 's1i3.png')]),
    'unlisted_file': (lambda out, f: (out / 'extra' ).mkdir() or
                      (out / 'extra' / 'stray.png').write_bytes(b'not listed'),
                      [('unlisted_file', 'extra/stray.png')]),
    'success_but_run_failed': (
        lambda out, f: (out / '_report.json').write_text(json.dumps(dict(
            json.loads((out / '_report.json').read_text()), success=False,
            first_failures=['3 images failed']))),
        [('success_but_run_failed', '_SUCCESS')]),
    'success_without_report': (lambda out, f: os.remove(out / '_report.json'),
                               [('success_without_report', '_SUCCESS')]),
    'no_success': (lambda out, f: os.remove(out / '_SUCCESS'), [('no_success', '_SUCCESS')]),
    'damaged_part': (
        lambda out, f: _part(out, f).write_bytes(
            _part(out, f).read_bytes()[:len(_part(out, f).read_bytes()) // 2]),
        None),  # its rows' files become unlisted too (checked below)
    'missing_part': (lambda out, f: os.remove(_part(out, f)), None),
    'missing_parts_index': (lambda out, f: os.remove(out / '_manifest' / '_parts.json'),
                            None),
}


@pytest.mark.parametrize('manifest_format', ['jsonl', 'parquet'])
@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_each_damage_is_named_with_exit_1(unrecord, exported, tmp_path, manifest_format,
                                          damage):
  out = _damaged(exported, tmp_path, manifest_format)
  do, expected = DAMAGE[damage]
  whole_part = _part(out, manifest_format).read_bytes()
  do(out, manifest_format)
  code, summary, stdout, stderr = _verify(unrecord, out)
  assert code == 1, stdout + stderr
  assert stdout.startswith('unrecord verify: NOT WHOLE'), stdout
  assert 'Traceback' not in stderr
  part = f'_manifest/part-00000-of-00001.{manifest_format}'
  if expected is None:  # the manifest's own damage: every image is then unlisted
    where = {'damaged_part': part, 'missing_part': part,
             'missing_parts_index': '_manifest/_parts.json'}[damage]
    images = {r['path'] for r in outputs.manifest_rows(exported[manifest_format,
                                                                'sha256'])}
    if damage == 'damaged_part' and manifest_format == 'jsonl':
      # The rows before the cut still name their files.
      images -= set(_whole_rows(whole_part[:len(whole_part) // 2]))
    expected = [(damage, where)] + [('unlisted_file', path) for path in sorted(images)]
  assert _problems(summary) == set(expected), summary['problems']
  for kind, path in expected[:5]:
    assert f'{kind}: {path}: ' in stdout, stdout
  counts = {}
  for kind, _ in expected:
    counts[kind] = counts.get(kind, 0) + 1
  assert summary['problem_counts'] == counts
  assert summary['whole'] is False


def test_a_cut_jsonl_part_is_damaged_and_its_whole_rows_still_checked(unrecord, exported,
                                                                      tmp_path):
  out = _damaged(exported, tmp_path)
  part = _part(out, 'jsonl')
  data = part.read_bytes()
  part.write_bytes(data[:len(data) // 2])
  kept = len(list(_whole_rows(data[:len(data) // 2])))
  code, summary, stdout, _ = _verify(unrecord, out)
  assert code == 1
  damaged = [p for p in summary['problems'] if p['kind'] == 'damaged_part']
  assert len(damaged) == 1 and damaged[0]['path'] == '_manifest/part-00000-of-00001.jsonl'
  assert summary['files_checked'] == kept
  assert summary['problem_counts']['unlisted_file'] == 8 - kept


def test_an_unlisted_part_and_every_problem_listed_in_json(unrecord, exported, tmp_path):
  out = _damaged(exported, tmp_path)
  shutil.copy(_part(out, 'jsonl'), out / '_manifest' / 'part-00001-of-00002.jsonl')
  for name in ('s0i0.png', 's0i2.png', 's0i3.png'):
    os.remove(out / name)
  code, summary, stdout, _ = _verify(unrecord, out, '--limit', '2')
  assert code == 1
  assert _problems(summary) == {
      ('unlisted_part', '_manifest/part-00001-of-00002.jsonl'),
      ('missing_file', 's0i0.png'), ('missing_file', 's0i2.png'),
      ('missing_file', 's0i3.png')}
  assert 'problems: 3 missing_file, 1 unlisted_part' in stdout
  assert '... and 2 more (--json lists every one)' in stdout


def test_a_mixed_manifest_checks_each_row_by_its_own_checksum(unrecord, shards, tmp_path):
  """A crc32c run over a sha256 root with --skip_existing: the old rows keep sha256."""
  out = tmp_path / 'mixed'
  _export(unrecord, shards, out)
  os.remove(out / 's1i2.png')
  _export(unrecord, shards, out, '--skip_existing', '--checksum', 'crc32c')
  rows = {r['path']: r for r in outputs.manifest_rows(out)}
  assert 'crc32c' in rows['s1i2.png'] and 'sha256' not in rows['s1i2.png']
  assert 'sha256' in rows['s0i0.png']
  code, summary, stdout, _ = _verify(unrecord, out)
  assert code == 0, stdout
  assert summary['checksums'] == {'crc32c': 1, 'sha256': 7}
  _flip_a_byte(out / 's1i2.png')
  code, summary, stdout, _ = _verify(unrecord, out)
  assert code == 1 and _problems(summary) == {('wrong_checksum', 's1i2.png')}
  assert 'wrong_checksum: s1i2.png: crc32c ' in stdout


def test_bad_usage_is_exit_2_in_one_line(unrecord, exported, tmp_path):
  (tmp_path / 'plain').mkdir()
  (tmp_path / 'plain' / 'a.png').write_bytes(b'x')
  for args, words in [
      ((str(tmp_path / 'plain'),), 'is not an unrecord output root'),
      ((str(tmp_path / 'nowhere'),), 'does not exist'),
      ((str(exported['jsonl', 'sha256']), '--colour'), 'unrecognized arguments'),
      ((), 'the following arguments are required: ROOT'),
      ((str(exported['jsonl', 'sha256']), '--storage_options', '{'), 'not valid JSON')]:
    result = unrecord('verify', *args)
    assert result.returncode == 2, (args, result.stderr)
    assert result.stderr.count('\n') == 1 and words in result.stderr, result.stderr
    assert result.stderr.startswith('unrecord verify: error: ')


def test_unreachable_storage_is_exit_3_in_one_line(unrecord):
  env = emulators.s3_env(f'http://127.0.0.1:{emulators.free_port()}')  # nothing there
  env['AWS_MAX_ATTEMPTS'] = '1'
  result = unrecord('verify', 's3://no-store/images', env=env, timeout=120)
  assert result.returncode == 3, result.stderr
  assert result.stderr.count('\n') == 1, result.stderr
  assert result.stderr.startswith('unrecord verify: error: cannot read s3://no-store/images')
  assert 'check that the storage is reachable' in result.stderr


def test_usage_lists_verify(unrecord):
  result = unrecord('--help')
  assert 'verify    check that an output root is whole' in result.stdout


# ---------------------------------------------------------------------------------------
# Object stores: crc32c rows against the store's own checksum, no object body read


@pytest.fixture(scope='module')
def servers():
  with emulators.s3_server() as s3, emulators.gcs_server() as gcs:
    yield s3, gcs




def _body_reads(log, store):
  """The requests that download an object's bytes (not listings, HEADs, uploads)."""
  if store == 'gs':
    return [(m, p) for m, p in log if m == 'GET' and 'alt=media' in p]
  # S3: a GET of a key (a listing is a GET of the bucket with ?list-type=2).
  return [(m, p) for m, p in log if m == 'GET' and 'list-type' not in p
          and p.strip('/').count('/') >= 1]


@pytest.mark.parametrize('store', ['gs', 's3'])
def test_crc32c_rows_are_checked_against_the_store_without_a_download(
    unrecord, shards, servers, store, monkeypatch):
  s3_url, gcs_url = servers
  bucket = f'verify-{store}'
  with emulators.FaultyProxy(gcs_url if store == 'gs' else s3_url, 'pass') as proxy:
    env = (emulators.gcs_env(proxy.url) if store == 'gs' else emulators.s3_env(proxy.url))
    if store == 'gs':
      for key, value in env.items():
        monkeypatch.setenv(key, value)
      import gcsfs
      fs = gcsfs.GCSFileSystem(token='anon', skip_instance_cache=True)
    else:
      fs = emulators.s3_client(proxy.url)
    fs.mkdir(bucket)
    root = f'{store}://{bucket}/images'
    _export(unrecord, shards, root, '--checksum', 'crc32c', env=env)
    rows = [json.loads(line) for line in
            fs.cat_file(f'{bucket}/images/_manifest/part-00000-of-00001.jsonl').splitlines()]
    if store == 's3':  # the upload sent its crc32c, so the store keeps it
      head = fs.call_s3('head_object', Bucket=bucket, Key=f'images/{rows[0]["path"]}',
                        ChecksumMode='ENABLED')
      assert base64.b64decode(head['ChecksumCRC32C']).hex() == rows[0]['crc32c']

    proxy.log.clear()
    result = unrecord('verify', root, '--json', env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary['checksums'] == {'crc32c': 8}
    assert (summary['from_store'], summary['files_read']) == (8, 0)
    reads = _body_reads(proxy.log, store)
    # Only the manifest, _parts.json and _report.json are read; no image's bytes.
    assert not [p for _, p in reads if '.png' in p], reads
    if store == 's3':  # one HEAD per image asked the store for its checksum
      assert len([p for m, p in proxy.log if m == 'HEAD' and '.png' in p]) == 8, proxy.log
    else:  # the listing carried every object's crc32c
      assert any(m == 'GET' and '/o?' in p for m, p in proxy.log), proxy.log

    # An object replaced by other bytes of the same size: the store's checksum tells.
    victim = rows[3]['path']
    data = bytearray(fs.cat_file(f'{bucket}/images/{victim}'))
    data[100] ^= 0xFF
    if store == 's3':
      fs.pipe_file(f'{bucket}/images/{victim}', bytes(data), ChecksumAlgorithm='CRC32C',
                   ChecksumCRC32C=base64.b64encode(
                       google_crc32c.value(bytes(data)).to_bytes(4, 'big')).decode())
    else:
      fs.pipe_file(f'{bucket}/images/{victim}', bytes(data))
    proxy.log.clear()
    result = unrecord('verify', root, env=env)
    assert result.returncode == 1, result.stdout
    assert f'wrong_checksum: {victim}: crc32c {rows[3]["crc32c"]} in its row; the store ' \
        f'says {google_crc32c.value(bytes(data)):08x}' in result.stdout, result.stdout
    assert not [p for _, p in _body_reads(proxy.log, store) if '.png' in p]


def test_s3_objects_without_a_stored_crc32c_are_read_and_say_so(unrecord, shards, servers):
  s3_url, _ = servers
  env = emulators.s3_env(s3_url)
  fs = emulators.s3_client(s3_url)
  fs.mkdir('verify-copied')
  _export(unrecord, shards, 's3://verify-copied/images', '--checksum', 'crc32c', env=env)
  path = 'verify-copied/images/s0i1.png'
  fs.pipe_file(path, fs.cat_file(path))  # rewritten by a tool that sends no crc32c
  result = unrecord('verify', 's3://verify-copied/images', '--json', env=env)
  assert result.returncode == 0, result.stdout + result.stderr
  summary = json.loads(result.stdout)
  assert (summary['from_store'], summary['files_read']) == (7, 1)
  assert summary['notes'] == ['1 crc32c rows were checked by reading their file: the '
                              'store keeps no crc32c for them']


def test_sha256_rows_on_a_store_read_each_object(unrecord, shards, servers, monkeypatch):
  _, gcs_url = servers
  env = emulators.gcs_env(gcs_url)
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  import gcsfs
  fs = gcsfs.GCSFileSystem(token='anon', skip_instance_cache=True)
  fs.mkdir('verify-sha')
  _export(unrecord, shards, 'gs://verify-sha/images', '--manifest_format', 'parquet',
          env=env)
  result = unrecord('verify', 'gs://verify-sha/images', '--json', env=env)
  assert result.returncode == 0, result.stdout + result.stderr
  summary = json.loads(result.stdout)
  assert (summary['checksums'], summary['from_store'], summary['files_read']) == (
      {'sha256': 8}, 0, 8)
  fs.rm_file('verify-sha/images/s1i1.png')
  result = unrecord('verify', 'gs://verify-sha/images', env=env)
  assert result.returncode == 1
  assert 'missing_file: s1i1.png: ' in result.stdout


def test_the_docs_verify_commands_run_as_written(tmp_path, shards):
  """docs/output.md, "Verify an output": its sh block, run line by line with `unrecord`
  the real command, in a folder holding records/ of TensorFlow-written photos."""
  import re
  import subprocess
  import sys
  from tests.conftest import REPO
  with open(os.path.join(REPO, 'docs', 'output.md'), encoding='utf-8') as f:
    section = f.read().split('## Verify an output', 1)[1].split('\n## ', 1)[0]
  block, = re.findall(r'```sh\n(.*?)```', section, re.S)
  shutil.copytree(shards, tmp_path / 'records')
  script = (f'unrecord() {{ {sys.executable} -m beam_jobs.cli "$@"; }}\nset -e\n' + block)
  result = subprocess.run(['bash', '-c', script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
  assert result.returncode == 0, result.stdout + result.stderr
  assert result.stdout.startswith('unrecord verify: OK: images\n'), result.stdout
  summary = json.loads((tmp_path / 'verify.json').read_text())
  assert summary['whole'] and summary['checksums'] == {'crc32c': 8}
  # And the statuses the page's table gives: 1 once a file is gone.
  gone = outputs.manifest_rows(tmp_path / 'images')[0]['path']
  os.remove(tmp_path / 'images' / gone)
  checks = '\n'.join(line for line in block.splitlines() if 'unrecord verify' in line)
  script = f'unrecord() {{ {sys.executable} -m beam_jobs.cli "$@"; }}\n' + checks
  result = subprocess.run(['bash', '-c', script], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=REPO))
  assert result.returncode == 1, result.stdout + result.stderr
  assert f'missing_file: {gone}: ' in result.stdout


def test_progress_is_one_updating_line_on_a_terminal_and_periodic_lines_otherwise():
  import io
  from transforms.output import verify

  class Terminal(io.StringIO):
    def isatty(self):
      return True

  terminal = Terminal()
  shown = verify.Progress(10, stream=terminal, refresh=0)
  shown.add(4)
  shown.add(6)
  shown.close()
  text = terminal.getvalue()
  assert '\n' not in text and text.count('\r') == 3  # two updates, then cleared
  assert 'unrecord verify: 4/10 files (40%)' in text
  assert 'unrecord verify: 10/10 files (100%)' in text and text.endswith('\r\033[K')
  log = io.StringIO()
  shown = verify.Progress(10, stream=log, interval=0)
  shown.add(5)
  shown.close()
  assert log.getvalue().startswith('unrecord verify: 5/10 files (50%) ')
  assert log.getvalue().endswith(' files/s\n') and '\r' not in log.getvalue()
  quiet = Terminal()
  shown = verify.Progress(10, stream=quiet, quiet=True, refresh=0)
  shown.add(10)
  shown.close()
  assert quiet.getvalue() == ''
