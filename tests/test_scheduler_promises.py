"""What a scheduler trusts, under faults: `_SUCCESS`, the exit status, the manifest, the report.

Each test runs the real command in a subprocess on TensorFlow-written records of real
photographs, breaks something the way a night in production does, and checks what a
scheduler (or the person paged) would check afterwards.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import s3fs

from tests import emulators
from tests import fixtures
from tests import outputs
from tests.conftest import REPO
from transforms.output import naming
from transforms.output import root_files

OWN_FILES = {'_manifest/part-00000-of-00001.jsonl', '_manifest/_parts.json', '_dead_letter.jsonl', '_dead_letter.tfrecord',
             '_report.json', '_report.html', '_SUCCESS', '_unrecord_run.json',
             '_unrecord_state.json'}


def _shards(folder, count, per_shard, size=24, first=0, prefix='part'):
  """`count` shards of `per_shard` photos, with ids; returns {id: photo}."""
  photos = {}
  for shard in range(count):
    records = []
    for i in range(per_shard):
      key = f'{prefix}{shard + first}-{i}'
      photo = fixtures.photo(shard * 31 + i + first, size, size)
      photos[key] = photo
      records.append(fixtures.example({
          'image': fixtures.bytes_feature(fixtures.serialized_tensor(photo)),
          'id': fixtures.bytes_feature(key.encode())}))
    fixtures.write_tfrecord(str(folder / f'{prefix}-{shard + first:05d}.tfrecord'), records)
  return photos


def _files(out):
  found = set()
  for folder, _, names in os.walk(out):
    for name in names:
      found.add(os.path.relpath(os.path.join(folder, name), out))
  return found


def _check_root(out, photos=None):
  """Manifest rows equal the image files, each file's bytes match its row, no debris; with
  `photos` ({id: pixels}), every image decodes to its photo. Returns the rows."""
  rows = outputs.manifest_rows(out)
  files = _files(out)
  assert not [f for f in files if f.endswith(naming.TEMP_SUFFIX) or
              f.startswith('_unrecord_tmp')], 'temp debris left'
  images = {f for f in files if f not in OWN_FILES and not f.startswith('_unrecord_lock')
            and not f.startswith('_logs/')}
  assert {r['path'] for r in rows} == images
  for row in rows:
    data = open(out / row['path'], 'rb').read()
    assert hashlib.sha256(data).hexdigest() == row['sha256'], row['path']
    if photos is not None:
      pixels = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                            cv2.COLOR_BGR2RGB)
      assert np.array_equal(pixels, photos[row['id']]), row['path']
  return rows


def _report(out):
  return json.load(open(out / '_report.json'))


# A run started as a terminal starts it: Ctrl-C at its default. A test process started in
# the background (`make test &`) ignores SIGINT, and exec would pass that on to the run,
# which would then rightly ignore Ctrl-C too.
_AS_AT_A_TERMINAL = ('import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); '
                     'os.execv(sys.executable, [sys.executable] + sys.argv[1:])')


def _start(*args, stderr=None):
  return subprocess.Popen(
      [sys.executable, '-c', _AS_AT_A_TERMINAL, '-m', 'beam_jobs.cli', 'export', *args],
      cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr or subprocess.DEVNULL,
      start_new_session=True)


def _wait_until(predicate, timeout=120.0, what='the condition'):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return
    time.sleep(0.005)
  raise AssertionError(f'{what} did not happen within {timeout} s')


def _images_in(out):
  try:
    return sum(1 for n in os.listdir(out) if n.endswith(('.png', '.jpg')))
  except FileNotFoundError:
    return 0


def _no_process_left(group):
  try:
    os.killpg(group, 0)
  except ProcessLookupError:
    return True
  return False


def _one_line_error(stderr):
  """The run's own lines: the opening line and a single error line, no traceback."""
  assert 'Traceback' not in stderr, stderr[-3000:]
  lines = [l for l in stderr.splitlines() if l.strip()]
  assert len(lines) <= 3, stderr[-3000:]
  return lines[-1]


# -- 1. a name that looks like a temp file ------------------------------------------------

def test_a_record_named_like_a_temp_file_is_refused_and_no_written_image_is_swept(
    unrecord, tmp_path):
  src, out = tmp_path / 'src', tmp_path / 'out'
  photos = [fixtures.photo(i, 16, 16) for i in range(3)]
  ids = ['evil.unrecord-tmp', 'evil.unrecord-tmp.png', 'ok']
  fixtures.write_tfrecord(str(src / 'e.tfrecord'), [fixtures.example({
      'image': fixtures.bytes_feature(fixtures.serialized_tensor(p)),
      'image/filename': fixtures.bytes_feature(name.encode())})
      for p, name in zip(photos, ids)])
  # Names always end in the format's extension, so only a folder can end in the reserved
  # suffix; one that does is refused.
  result = unrecord('export', '--input', str(src), '--output', str(out),
                    '--name_template', '{image/filename}/{index}.{ext}', '--max_failures', '1')
  assert result.returncode == 0, result.stderr[-3000:]
  assert (out / '_SUCCESS').exists()
  rows = _check_root(out)
  assert sorted(r['path'] for r in rows) == ['evil.unrecord-tmp.png/1.png', 'ok/2.png']
  dead = [json.loads(line) for line in open(out / '_dead_letter.jsonl')]
  assert [(d['reason'], d['index']) for d in dead] == [('unsafe_name', 0)]
  assert 'reserved' in dead[0]['message']


def test_the_temp_sweep_removes_only_temp_files(tmp_path):
  root = root_files.OutputRoot(str(tmp_path), None)
  keep = ['a.unrecord-tmp', '.b.unrecord-tmp', 'x/.c.png.unrecord-tmp', 'd.png']
  for name in keep:
    os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
    (tmp_path / name).write_bytes(b'user data')
  debris = root._local_temp(str(tmp_path / 'x' / 'e.png'))  # what a killed write leaves
  deeper = root._local_temp(str(tmp_path / 'x' / 'y' / 'z' / 'f.png'))
  outside = tmp_path.parent / f'{tmp_path.name}-elsewhere'
  outside.mkdir()
  theirs = root._local_temp(str(outside / 'g.png'))  # a folder the root only links to
  os.symlink(outside, tmp_path / 'linked')
  for path in (debris, deeper, theirs):
    open(path, 'wb').close()
  assert sorted(root.remove_temp_debris()) == sorted([debris, deeper])
  assert _files(tmp_path) == set(keep) and os.path.exists(theirs)


# -- 2. _SUCCESS is never stale -----------------------------------------------------------

@pytest.mark.parametrize('mode', ['plain', 'incremental'])
def test_a_failed_rerun_removes_the_earlier_success(unrecord, tmp_path, mode):
  src, out = tmp_path / 'src', tmp_path / 'out'
  _shards(src, 2, 3)
  extra = ['--incremental'] if mode == 'incremental' else []
  first = unrecord('export', '--input', str(src), '--output', str(out), *extra)
  assert first.returncode == 0 and (out / '_SUCCESS').exists()
  good = (src / 'part-00000.tfrecord').read_bytes()
  bad = bytearray(good)
  bad[40] ^= 0xFF  # inside the first record's payload
  (src / 'part-00009.tfrecord').write_bytes(bytes(bad))
  result = unrecord('export', '--input', str(src), '--output', str(out), *extra)
  assert result.returncode == 1, result.stderr[-3000:]
  assert not (out / '_SUCCESS').exists()
  assert _report(out)['success'] is False
  assert 'no _SUCCESS' in result.stderr.splitlines()[-1]


# -- 3. --incremental sees content, not mtimes --------------------------------------------

def test_incremental_sees_a_same_size_change_with_its_mtime_restored(unrecord, tmp_path):
  src, out, other = tmp_path / 'src', tmp_path / 'out', tmp_path / 'other'
  photos = _shards(src, 2, 3)
  # The same shard names, ids and sizes, other pixels.
  changed = {k: np.ascontiguousarray(255 - v) for k, v in photos.items()}
  fixtures.write_tfrecord(str(other / 'part-00001.tfrecord'), [fixtures.example({
      'image': fixtures.bytes_feature(fixtures.serialized_tensor(changed[f'part1-{i}'])),
      'id': fixtures.bytes_feature(f'part1-{i}'.encode())}) for i in range(3)])
  assert unrecord('export', '--input', str(src), '--output', str(out),
                  '--incremental').returncode == 0
  _check_root(out, photos)
  target, replacement = src / 'part-00001.tfrecord', other / 'part-00001.tfrecord'
  assert target.stat().st_size == replacement.stat().st_size
  stat = target.stat()
  with open(target, 'r+b') as f:  # cat B2 > B
    f.write(replacement.read_bytes())
  os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # touch -r B.ref B
  assert target.stat().st_mtime_ns == stat.st_mtime_ns
  result = unrecord('export', '--input', str(src), '--output', str(out), '--incremental')
  assert result.returncode == 0, result.stderr[-3000:]
  report = _report(out)
  assert report['incremental']['shards_processed'] == 1 and report['written'] == 3
  expected = {**photos, **{k: v for k, v in changed.items() if k.startswith('part1-')}}
  _check_root(out, expected)
  again = unrecord('export', '--input', str(src), '--output', str(out), '--incremental')
  assert again.returncode == 0 and _report(out)['written'] == 0


# -- 4. one writer per root ---------------------------------------------------------------

def test_a_second_run_into_a_busy_root_is_refused_and_a_dead_holder_does_not_block(
    unrecord, tmp_path):
  src, out = tmp_path / 'src', tmp_path / 'out'
  photos = _shards(src, 4, 500, size=32)
  first = _start('--input', str(src), '--output', str(out), '--png_encoder', 'opencv')
  _wait_until(lambda: _images_in(out) > 0, what='the first run writing')
  os.killpg(first.pid, signal.SIGSTOP)  # the first run, alive but slow, holds the root
  try:
    second = unrecord('export', '--input', str(src), '--output', str(out),
                      '--png_encoder', 'opencv')
  finally:
    os.killpg(first.pid, signal.SIGCONT)
  assert second.returncode == 2, second.stderr[-3000:]
  line = _one_line_error(second.stderr)
  assert 'another unrecord run is writing to' in line and f'pid {first.pid}' in line
  assert first.wait(120) == 0
  _check_root(out, photos)

  # The holder killed: its lock file stays, but nobody holds it any more.
  third = _start('--input', str(src), '--output', str(out), '--png_encoder', 'opencv')
  _wait_until(lambda: (out / '_unrecord_lock.json').exists() and
              not (out / '_SUCCESS').exists(), what='the third run taking the lock')
  os.killpg(third.pid, signal.SIGKILL)
  third.wait()
  assert (out / '_unrecord_lock.json').exists()
  fourth = unrecord('export', '--input', str(src), '--output', str(out), '--png_encoder',
                    'opencv')
  assert fourth.returncode == 0, fourth.stderr[-3000:]
  _check_root(out, photos)
  assert not (out / '_unrecord_lock.json').exists()


# -- 5. another export into a used root ---------------------------------------------------

def test_a_different_export_into_a_used_root_is_refused_or_combined_as_asked(unrecord,
                                                                          tmp_path):
  a, c, out = tmp_path / 'a', tmp_path / 'c', tmp_path / 'out'
  photos_c = _shards(c, 1, 4, prefix='c')
  photos_a = _shards(a, 1, 3, prefix='a')
  assert unrecord('export', '--input', str(c), '--output', str(out)).returncode == 0
  before = {n: (out / n).read_bytes() for n in _files(out) if n.endswith('.png')}

  refused = unrecord('export', '--input', str(a), '--output', str(out))
  assert refused.returncode == 2
  line = _one_line_error(refused.stderr)
  for advice in ('--skip_existing', '--incremental', '--overwrite', 'new --output'):
    assert advice in line
  assert {n: (out / n).read_bytes() for n in _files(out) if n.endswith('.png')} == before
  assert (out / '_SUCCESS').exists()  # a refused run changes nothing

  combined = unrecord('export', '--input', str(a), '--output', str(out), '--skip_existing')
  assert combined.returncode == 0, combined.stderr[-3000:]
  rows = _check_root(out, {**photos_a, **photos_c})
  assert len(rows) == 7

  replaced = unrecord('export', '--input', str(a), '--output', str(out), '--overwrite')
  assert replaced.returncode == 0, replaced.stderr[-3000:]
  rows = _check_root(out, photos_a)
  assert sorted(r['id'] for r in rows) == sorted(photos_a)
  assert _report(out)['success'] is True

  same = unrecord('export', '--input', str(a), '--output', str(out))  # the same export
  assert same.returncode == 0, same.stderr[-3000:]
  _check_root(out, photos_a)


def test_overwrite_never_removes_inputs(unrecord, tmp_path):
  out = tmp_path / 'out'
  _shards(out / 'records', 1, 2)
  result = unrecord('export', '--input', str(out / 'records'), '--output', str(out),
                    '--overwrite')
  assert result.returncode == 2
  assert '--overwrite would remove the inputs' in _one_line_error(result.stderr)
  assert (out / 'records' / 'part-00000.tfrecord').exists()


# -- 6. an input that shrinks while it is read --------------------------------------------

def test_a_file_cut_at_a_frame_boundary_mid_run_is_a_failure_not_a_silent_loss(tmp_path):
  src, out = tmp_path / 'src', tmp_path / 'out'
  photo = fixtures.photo(0, 64, 64)
  record = fixtures.example({'image': fixtures.bytes_feature(fixtures.serialized_tensor(photo))})
  path = fixtures.write_tfrecord(str(src / 'big.tfrecord'), [record] * 3000)
  frame = len(record) + 16
  assert os.path.getsize(path) == frame * 3000
  job = _start('--input', str(src), '--output', str(out), '--split_size_mb', '1',
               '--png_encoder', 'opencv')
  _wait_until(lambda: _images_in(out) > 0, what='the first image')  # planning is done
  os.truncate(path, frame * 300)  # a whole number of frames: the file looks valid
  assert job.wait(180) == 1
  assert not (out / '_SUCCESS').exists()
  dead = [json.loads(line) for line in open(out / '_dead_letter.jsonl')]
  assert dead and {d['reason'] for d in dead} == {'truncated'}
  assert all(d['source'] == path and 'cut or replaced while the run read it' in d['message']
             for d in dead)
  report = _report(out)
  assert report['success'] is False and report['failed'] == len(dead)
  _check_root(out)


# -- 7. a damaged image left in place -----------------------------------------------------

def test_skip_existing_rewrites_empty_and_cut_images_and_the_report_never_fails(unrecord,
                                                                              tmp_path):
  src, out = tmp_path / 'src', tmp_path / 'out'
  photos = _shards(src, 1, 6)
  assert unrecord('export', '--input', str(src), '--output', str(out),
                  '--name_template', '{id}.{ext}').returncode == 0
  (out / 'part0-0.png').write_bytes(b'')
  half = (out / 'part0-1.png').read_bytes()
  (out / 'part0-1.png').write_bytes(half[:len(half) // 2])
  result = unrecord('export', '--input', str(src), '--output', str(out),
                    '--name_template', '{id}.{ext}', '--skip_existing')
  assert result.returncode == 0, result.stderr[-3000:]
  report = _report(out)
  assert (report['written'], report['skipped']) == (2, 4)
  assert (out / '_SUCCESS').exists() and (out / '_report.html').exists()
  _check_root(out, photos)


# -- 8. inputs that cannot be opened ------------------------------------------------------

def test_symlink_loops_and_dangling_links_are_dead_letters_beside_good_shards(unrecord,
                                                                            tmp_path):
  src, out = tmp_path / 'src', tmp_path / 'out'
  photos = _shards(src, 2, 3)
  os.symlink('y.tfrecord', src / 'x.tfrecord')
  os.symlink('x.tfrecord', src / 'y.tfrecord')
  os.symlink('nowhere.tfrecord', src / 'dangling.tfrecord')
  result = unrecord('export', '--input', str(src), '--output', str(out))
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  dead = {os.path.basename(d['source']): d for d in map(
      json.loads, open(out / '_dead_letter.jsonl'))}
  assert set(dead) == {'x.tfrecord', 'y.tfrecord', 'dangling.tfrecord'}
  assert {d['reason'] for d in dead.values()} == {'read_error'}
  assert 'symbolic links' in dead['x.tfrecord']['message']
  assert 'No such file' in dead['dangling.tfrecord']['message']
  _check_root(out, photos)
  allowed = unrecord('export', '--input', str(src), '--output', str(out),
                     '--max_failures', '3')
  assert allowed.returncode == 0 and (out / '_SUCCESS').exists()


# -- 9. infrastructure faults -------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
  """A 1 MiB tmpfs, mounted for the test and unmounted after it."""
  mount = tmp_path / 'disk'
  mount.mkdir()
  done = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(mount)],
                        capture_output=True, text=True)
  assert done.returncode == 0, f'cannot mount a tmpfs for the ENOSPC test: {done.stderr}'
  yield mount
  subprocess.run(['umount', '-l', str(mount)], check=False)


def test_disk_full_ends_with_one_line_and_a_rerun_after_freeing_space_completes(
    unrecord, tmp_path, small_disk):
  src, out = tmp_path / 'src', small_disk / 'out'
  photos = _shards(src, 4, 100, size=48)
  result = unrecord('export', '--input', str(src), '--output', str(out), '--png_encoder',
                    'opencv')
  assert result.returncode == 3
  line = _one_line_error(result.stderr)
  assert 'No space left on device (ENOSPC)' in line and '--skip_existing' in line
  assert not (out / '_SUCCESS').exists()
  if (out / '_report.json').exists():  # written when the cleanup freed enough room
    assert _report(out)['success'] is False
  else:
    assert '_report.json could not be written' in line
  subprocess.run(['mount', '-o', 'remount,size=64m', str(small_disk)], check=True)
  again = unrecord('export', '--input', str(src), '--output', str(out), '--png_encoder',
                   'opencv', '--skip_existing')
  assert again.returncode == 0, again.stderr[-3000:]
  _check_root(out, photos)
  assert len(photos) == 400


def test_a_shard_deleted_mid_run_is_a_dead_letter_and_the_others_finish(tmp_path):
  src, out = tmp_path / 'src', tmp_path / 'out'
  photos = _shards(src, 8, 150, size=32)
  job = _start('--input', str(src), '--output', str(out), '--png_encoder', 'opencv')
  _wait_until(lambda: _images_in(out) > 0, what='the first image')
  deleted = [f'part-{i:05d}.tfrecord' for i in range(4, 8)]
  for name in deleted:
    os.unlink(src / name)
  code = job.wait(180)
  rows = _check_root(out, photos)
  dead = [json.loads(line) for line in open(out / '_dead_letter.jsonl')]
  missing = {os.path.basename(d['source']) for d in dead}
  assert {d['reason'] for d in dead} <= {'read_error'}
  written_from = {r['source'].rsplit('/', 1)[1] for r in rows}
  for name in deleted:  # each deleted shard: read before it went, or a dead letter
    shard = int(name[5:10])
    count = sum(r['id'].startswith(f'part{shard}-') for r in rows)
    assert count == 150 or (name in missing and name not in written_from), name
  for shard in range(4):
    assert sum(r['id'].startswith(f'part{shard}-') for r in rows) == 150
  assert code == (1 if dead else 0)


def _bucket(s3_url, name):
  fs = s3fs.S3FileSystem(key=emulators.S3_KEY, secret=emulators.S3_SECRET,
                         client_kwargs={'endpoint_url': s3_url}, skip_instance_cache=True)
  fs.mkdir(name)
  return fs


def _s3_export(endpoint, *args, **env):
  """The export against the S3 server at `endpoint`, started; stderr piped."""
  return subprocess.Popen(
      [sys.executable, '-m', 'beam_jobs.cli', 'export', *args, '--quiet'], cwd=REPO,
      env=dict(os.environ, **emulators.s3_env(endpoint), **env), stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)


def test_an_object_store_outage_is_ridden_out_or_reported_in_one_line(tmp_path):
  src = tmp_path / 'src'
  photos = _shards(src, 4, 40)
  args = ['--input', str(src), '--output', 's3://nightly/images', '--name_template',
          '{id}.{ext}']
  with emulators.s3_server() as s3_url:
    s3 = _bucket(s3_url, 'nightly')
    with emulators.FaultyProxy(s3_url, 'pass') as proxy:
      job = _s3_export(proxy.url, *args)
      _wait_until(lambda: proxy.puts > 10, what='the first uploads')
      proxy.mode = 'down'  # every request now has its connection reset ...
      time.sleep(3)
      proxy.mode = 'pass'  # ... and the store is back
      _, stderr = job.communicate(timeout=300)
      outage_faults = proxy.faults
    assert outage_faults > 0
    if job.returncode != 0:
      assert job.returncode == 3
      line = _one_line_error(stderr)
      assert 's3://nightly/images' in line and '--skip_existing' in line
      again = _s3_export(s3_url, *args, '--skip_existing')
      _, stderr = again.communicate(timeout=300)
      assert again.returncode == 0, stderr[-3000:]
    local = tmp_path / 'copy'
    s3.invalidate_cache()
    s3.get('nightly/images/', str(local), recursive=True)
    _check_root(local, photos)


def test_a_gcs_store_restarted_mid_run_loses_nothing(tmp_path, monkeypatch):
  import gcsfs
  src = tmp_path / 'src'
  photos = _shards(src, 2, 30)
  args = ['--input', str(src), '--output', 'gs://nightly/images', '--name_template',
          '{id}.{ext}', '--quiet']
  with emulators.RestartableGCS(str(tmp_path / 'gcs')) as store, \
      emulators.FaultyProxy(store.url, 'pass') as address:  # the store's stable address
    env = dict(os.environ, **emulators.gcs_env(address.url))
    for key, value in emulators.gcs_env(address.url).items():
      monkeypatch.setenv(key, value)
    gcs = gcsfs.GCSFileSystem(token='anon', skip_instance_cache=True)
    gcs.mkdir('nightly')

    def uploaded():
      gcs.invalidate_cache()
      try:
        return len(gcs.find('nightly/images')) > 10
      except OSError:
        return False

    job = subprocess.Popen([sys.executable, '-m', 'beam_jobs.cli', 'export', *args],
                           cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    _wait_until(uploaded, what='the first uploads')
    store.stop()  # the store goes away mid-run ...
    time.sleep(2)
    store.start()  # ... and comes back with what it held
    address.upstream = store.url.replace('http://', '')
    _, stderr = job.communicate(timeout=300)
    if job.returncode != 0:
      assert job.returncode == 3
      line = _one_line_error(stderr)
      assert 'gs://nightly/images' in line and '--skip_existing' in line
      again = subprocess.run([sys.executable, '-m', 'beam_jobs.cli', 'export', *args,
                              '--skip_existing'], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=300)
      assert again.returncode == 0, again.stderr[-3000:]
    local = tmp_path / 'copy'
    gcs.invalidate_cache()
    gcs.get('nightly/images/', str(local), recursive=True)
    _check_root(local, photos)


def test_an_object_store_gone_for_good_ends_with_one_line(tmp_path):
  src = tmp_path / 'src'
  _shards(src, 2, 40)
  with emulators.s3_server() as s3_url:
    _bucket(s3_url, 'gone')
    with emulators.FaultyProxy(s3_url, 'pass') as proxy:
      # The store's client gives up after its retries, however many: two attempts a
      # request (AWS_MAX_ATTEMPTS, the botocore setting) reach that end sooner than the
      # default's several backoffs.
      job = _s3_export(proxy.url, '--input', str(src), '--output', 's3://gone/images',
                       AWS_MAX_ATTEMPTS='2')
      _wait_until(lambda: proxy.puts > 5, what='the first uploads')
      proxy.mode = 'down'
      _, stderr = job.communicate(timeout=300)
  assert job.returncode == 3
  line = _one_line_error(stderr)
  assert 'cannot write s3://gone/images/' in line and 'reachable' in line
  # A report is not tried on the store that just failed after all its retries.
  assert '_report.json was not written (the output storage failed)' in line


# -- 10. Ctrl-C ---------------------------------------------------------------------------

@pytest.mark.parametrize('sent, code, said', [(signal.SIGINT, 130, 'Ctrl-C'),
                                              (signal.SIGTERM, 143, 'SIGTERM')])
def test_an_interrupt_prints_one_line_stops_every_worker_and_a_rerun_finishes(
    unrecord, tmp_path, sent, code, said):
  src, out = tmp_path / 'src', tmp_path / 'out'
  photos = _shards(src, 4, 1500, size=32)
  err = tmp_path / 'err'
  with open(err, 'w') as stderr:
    job = _start('--input', str(src), '--output', str(out), '--png_encoder', 'opencv',
                 stderr=stderr)
    _wait_until(lambda: _images_in(out) > 50, what='images on disk')
    if sent == signal.SIGINT:
      os.killpg(job.pid, sent)  # what the terminal does: the whole foreground group
    else:
      os.kill(job.pid, sent)  # what a scheduler does: the process it started
    status = job.wait(60)
  assert status == code, (f'{_images_in(out)} images on disk; the run said: '
                          + err.read_text()[-3000:])
  _wait_until(lambda: _no_process_left(job.pid), timeout=15, what='every worker exiting')
  line = _one_line_error(err.read_text())
  assert f'interrupted ({said})' in line and 'image(s) written' in line
  assert '--skip_existing' in line
  assert not (out / '_SUCCESS').exists()
  assert _report(out)['success'] is False and _report(out)['error'] == f'interrupted ({said})'
  again = unrecord('export', '--input', str(src), '--output', str(out), '--png_encoder',
                   'opencv', '--skip_existing')
  assert again.returncode == 0, again.stderr[-3000:]
  _check_root(out, photos)


# -- SIGKILL at every stage, then the recovery a scheduler would run ----------------------

def _kill_when(job, predicate) -> bool:
  """SIGKILLs the run's whole process group once `predicate()`; False if it ended first."""
  _wait_until(lambda: predicate() or job.poll() is not None, what='the kill point')
  if job.poll() is not None:
    return False
  os.killpg(job.pid, signal.SIGKILL)
  job.wait()
  return True


@pytest.mark.parametrize('run, point', [
    ('fresh', 'first images'), ('fresh', 'manifest merge'),
    ('skip_existing', 'first images'), ('incremental', 'first images'),
    ('incremental', 'manifest merge')])
def test_sigkill_then_recovery_leaves_a_complete_root(unrecord, tmp_path, run, point):
  src, out = tmp_path / 'src', tmp_path / 'out'
  photos = _shards(src, 2, 600, size=32)
  flags = ['--png_encoder', 'opencv']
  if run != 'fresh':  # a finished root, then a re-run over it is killed
    mode = '--incremental' if run == 'incremental' else '--skip_existing'
    assert unrecord('export', '--input', str(src), '--output', str(out), mode,
                    *flags).returncode == 0
    photos.update(_shards(src, 2, 600, size=32, first=2))  # new shards since then
    flags.append(mode)
  total = len(photos)
  job = _start('--input', str(src), '--output', str(out), *flags)
  if point == 'first images':
    before = _images_in(out)
    assert _kill_when(job, lambda: _images_in(out) > before + 20)
    assert not (out / '_SUCCESS').exists()
  elif _kill_when(job, lambda: _images_in(out) >= total):  # the merge or report under way
    assert not (out / '_SUCCESS').exists()
  if not (out / '_SUCCESS').exists():
    recovery = '--incremental' if run == 'incremental' else '--skip_existing'
    again = unrecord('export', '--input', str(src), '--output', str(out), recovery,
                     '--png_encoder', 'opencv')
    assert again.returncode == 0, again.stderr[-3000:]
  assert (out / '_SUCCESS').exists()
  rows = _check_root(out, photos)
  assert len(rows) == total
  assert _report(out)['success'] is True
