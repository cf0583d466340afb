"""`make bench` in its --quick mode: every system runs, writes right pixels, gets measured."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.timeout(900)  # as its subprocess: the Flink rounds add 1-2 minutes
@pytest.mark.xdist_group('flink')  # its Flink rounds use the cluster's slots too
def test_quick_bench_runs_every_system_and_checks_their_output(tmp_path):
  out = tmp_path / 'bench'
  result = subprocess.run(
      [sys.executable, '-m', 'bench.run', '--quick', '--out', str(out)],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  # The harness fails (exit 2) when any system's output is wrong: a missing image, or a
  # PNG whose pixels match no source crop.
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  results = json.loads((out / 'results.json').read_text())
  systems = {(row['dataset'], row['system']) for row in results['rows']}
  for peer in ('loop', 'threads', 'tfdata', 'beam_naive', 'expert', 'floor_opencv',
               'floor_job', 'job'):
    assert ('a', peer) in systems
  assert {('b', 'expert'), ('c', 'expert'), ('c', 'floor_job'), ('d', 'floor_atomic'),
          ('d', 'expert'), ('e', 'job')} <= systems
  cases = {row['case'] for row in results['rows']}
  assert {'tiny/job', 'tiny/import_beam', 'e_head/job_1worker',
          f'e_head/job_{os.cpu_count()}workers', 'e/job_1worker'} <= cases
  for row in results['rows']:
    assert row['wall_seconds'] > 0 and row['images'] > 0 and row['tree_peak_mb'] > 0
  rows_by_case = {row['case']: row for row in results['rows']}
  job = rows_by_case['a/job']
  assert job['worker_peak_mb'] > 0  # the job's worker processes were seen and measured
  assert len(results['targets']) == 11
  # Every job run reports its workers' time, inside its wall time.
  for row in results['rows']:
    if row['system'] == 'job':
      assert 0 < row['work_seconds'] < row['wall_seconds'], row
  assert results['figures']['e_speedup_work'] > 0
  # (a) on the local Flink cluster beside DirectRunner, both worker kinds; the job ran
  # there (its report's work) and wrote every image (the harness verified the pixels).
  for system in ('job_beside_flink', 'flink_loopback', 'flink_external'):
    row = rows_by_case[f'a/{system}']
    assert row['images'] == job['images'] and 0 < row['work_seconds'] < row['wall_seconds']
  # Its 8-image start-up, split into consecutive phases that add up to the wall.
  splits = results['figures']['flink_startup']
  assert set(splits) == {'loopback'}  # the full run splits EXTERNAL's too
  for split in splits.values():
    assert list(split['phases']) == ['launcher', 'staging', 'submission', 'scheduling',
                                     'harness', 'work', 'finish', 'exit']
    assert sum(split['phases'].values()) == pytest.approx(split['wall_seconds'], abs=0.01)
    assert all(seconds > 0 for seconds in split['phases'].values()), split
  assert "(a) Flink EXTERNAL steady 4k->20k / Direct" in result.stdout
  # Beside every ratio, what it divides by in this hour: the machine's own `import
  # apache_beam` and the expert script's rate.
  figures = results['figures']
  hour = (f"this hour: import apache_beam {figures['import_beam_seconds']:.2f} s, expert "
          f"(a) {figures['a_expert_steady_img_s']:,.0f} img/s")
  assert results['hour'] == hour
  ratio_lines = [line for line in result.stdout.splitlines()
                 if line.startswith(('  met ', '  MISS ', '  within ', '  BEYOND '))]
  assert len(ratio_lines) == 11 + 3
  assert all(line.endswith('; ' + hour) for line in ratio_lines), ratio_lines
  assert results['machine']['cores'] == os.cpu_count()
  # Each steady target's bound, from the one-core runs: the scripts on one worker and
  # bench.per_image's work and steps, recomputed here from what results.json holds.
  rows = {row['case']: row for row in results['rows']}
  one_core = results['one_core']
  bounds = {b['target']: b for b in results['bounds']}
  assert set(bounds) <= {t['name'] for t in results['targets']} and len(bounds) == 3
  expert = rows['a/expert_1worker']
  expert_us = expert['timed_seconds'] / expert['images'] * 1e6
  # Quick mode's 20,000-image case is its 4,000-image one: no fixed-step growth.
  work = rows['a/job_one_core']
  assert work['system'] == 'per_image' and work['images'] == expert['images']
  a_bound = expert_us / (work['timed_seconds'] / work['images'] * 1e6)
  assert bounds['(a) steady 4k->20k / expert script']['ratio'] == pytest.approx(a_bound)
  floor = rows['d/floor_atomic_1worker']
  floor_us = floor['timed_seconds'] / floor['images'] * 1e6
  d_steps = one_core['d_steps']
  owed = (d_steps['name'] + d_steps['manifest row, its hash included'] +
          d_steps['manifest entry (a chunk at a time)'])
  assert bounds['(d) passthrough 4k->40k / atomic floor']['ratio'] == pytest.approx(
      floor_us / (floor_us + owed))
  for bound in bounds.values():
    assert bound['within'] == (bound['ratio'] >= bound['goal'])
    assert f"{bound['ratio']:6.2f} (goal >= {bound['goal']})" in result.stdout
  # (a) with each --checksum, and `unrecord verify` of (c)'s files with each.
  for checksum in ('sha256', 'crc32c', 'blake3'):
    assert rows[f'a/job_{checksum}']['images'] == rows['a/job']['images']
    verified = rows[f'c_verify/verify_{checksum}']
    assert verified['system'] == 'verify' and verified['images'] == rows['c/job']['images']
  assert set(results['figures']['verify_files_s_by_checksum']) == {
      'sha256', 'crc32c', 'blake3'}
  # Quick mode never rewrites the committed figures.
  assert 'bench: wrote' not in result.stdout


def test_verify_bench_exports_and_verifies_a_root_per_checksum(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'bench.verify_root', '--files', '300', '--data',
       str(tmp_path / 'data'), '--scratch', str(tmp_path / 'scratch')],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads(result.stdout.splitlines()[-1])
  assert [row['checksum'] for row in rows] == ['sha256', 'crc32c', 'blake3']
  for row in rows:  # the harness raises unless verify found every file whole
    assert row['files'] == 300 and row['wall_seconds'] > row['verify_seconds'] > 0
    assert f"verify {row['checksum']:<7} 300 files:" in result.stdout
  assert not os.listdir(tmp_path / 'scratch')  # the roots are removed


def _float_photos(folder, count: int, size: int) -> None:
  """`count` TensorFlow-serialized float32 photos in one TFRecord file under `folder`."""
  from tests import fixtures
  import numpy as np
  payloads = [fixtures.example({
      'image': fixtures.bytes_feature(fixtures.serialized_tensor(
          (fixtures.photo(i, size, size) / 255.0).astype(np.float32))),
      'label': fixtures.int64_feature(i % 3)}) for i in range(count)]
  fixtures.write_tfrecord(str(folder / 'train.tfrecord-00000-of-00001'), payloads)


def _per_image(tmp_path, mode: str) -> str:
  """`python -m bench.per_image` on 12 TensorFlow-written photos; its output."""
  _float_photos(tmp_path, 12, 96)
  result = subprocess.run(
      [sys.executable, '-m', 'bench.per_image', str(tmp_path / 'train*'), '--files', '1',
       '--output', str(tmp_path / 'out'), mode],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_per_image_harness_runs_export_range_and_writes_every_image(tmp_path):
  stdout = _per_image(tmp_path, '--profile')
  assert stdout.startswith('12 images from 1 ranges of 1 files: ')
  # The profile covers the export's own code, not only the harness around it.
  assert 'function calls' in stdout and 'transforms/' in stdout


def test_per_image_steps_time_each_step_and_the_floors_beside_them(tmp_path):
  lines = _per_image(tmp_path, '--steps').splitlines()
  assert lines[0] == '12 images of 1 files; us an image, each step alone:'
  costs = {line[:36].strip(): float(line[36:]) for line in lines[1:]}
  assert set(costs) == {
      'read + both CRCs', 'decode (layout, header check)', 'name',
      'render (encode, or passthrough)', 'sha256 of the file',
      'manifest row, its hash included', 'manifest entry (a chunk at a time)', 'write: temp file, rename',
      'read + both CRCs (expert)', 'atomic write (floor_atomic)',
      'job steps (sha256 counted once)', 'floor steps'}
  assert all(cost > 0 for cost in costs.values())
  assert costs['floor steps'] == pytest.approx(
      costs['read + both CRCs (expert)'] + costs['atomic write (floor_atomic)'], abs=0.2)
  # Encoding 96x96 PNGs costs more than hashing them.
  assert costs['render (encode, or passthrough)'] > costs['sha256 of the file']
  assert not os.path.exists(tmp_path / 'out')


def test_profile_run_samples_a_real_run_and_sorts_its_time_into_stages(tmp_path):
  _float_photos(tmp_path, 300, 160)
  result = subprocess.run(
      [sys.executable, '-m', 'bench.profile_run', '--input', str(tmp_path / 'train*'),
       '--output', str(tmp_path / 'out'), '--rate', '200'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[0].startswith('300 images in ')
  rows = {line.split(' | ')[0].lstrip('| '): line for line in lines if line.startswith('| ')}
  # The workers' own stages were seen, and the launcher's imports.
  for stage in ('encode (fpng, OpenCV)', 'launcher: imports',
                'worker: Beam harness (gRPC, bundles)'):
    assert stage in rows, result.stdout
  shares = [float(line.split(' | ')[1].rstrip('%')) for stage, line in rows.items()
            if stage not in ('stage', '---')]
  assert 99 <= sum(shares) <= 101
  assert not (tmp_path / 'out').exists()  # the run's output is removed


def test_profile_run_sorts_resumed_reading_and_planning_frames_into_their_stages():
  from bench import profile_run
  harness = ['run (apache_beam/runners/worker/sdk_worker.py:300)',
             'process (transforms/ptransforms.py:204)']
  reading = harness + ['export_range (transforms/export.py:120)',
                       'read_records (transforms/inputs/tfrecord.py:404)',
                       '_walk (transforms/inputs/tfrecord.py:356)']
  planning = harness + ['plan_file (transforms/inputs/record_ranges.py:47)',
                        '_walk (transforms/inputs/tfrecord.py:300)']
  assert profile_run.classify(reading, 'worker') == 'read records: page cache copy, CRC32C'
  assert profile_run.classify(planning, 'worker') == (
      'worker: planning ranges (frame index pass)')
  assert profile_run.classify(harness[:1], 'worker') == 'worker: Beam harness (gRPC, bundles)'


def test_incremental_launch_bench_lists_and_judges_every_shard_on_the_s3_emulator():
  """bench.incremental_launch as `make bench` runs it (there at 10^5 shards): every shard
  listed and judged, new on the first run and unchanged on the second, with its goal."""
  done = subprocess.run([sys.executable, '-m', 'bench.incremental_launch', '--shards', '300'],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.splitlines()[0])
  assert result['shards'] == 300 and result['met'] and result['goal_seconds'] == 120
  assert result['launch_seconds'] == pytest.approx(
      result['listing_seconds'] + result['judge_unchanged_seconds'], abs=0.02)
  assert 'met  --incremental launch at 300 S3 shards' in done.stdout


def test_report_samples_bench_merges_every_part_and_checks_its_memory_is_flat():
  done = subprocess.run([sys.executable, '-m', 'bench.report_samples', '--parts', '4,40'],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{')]
  assert [r['parts'] for r in rows] == [4, 40] and rows[1]['rows'] == 4_000_000
  assert rows[1]['all_summaries_mb'] == pytest.approx(10 * rows[0]['all_summaries_mb'], 0.1)
  assert rows[1]['merge_peak_mb'] < rows[1]['all_summaries_mb']
  assert "met  report samples' merge memory flat over 4-40 parts" in done.stdout


def test_scale_checks_each_runs_memory_against_the_smallest_of_its_format():
  from bench import scale  # pylint: disable=import-outside-toplevel
  rows = scale.with_changes([
      {'images': 2000, 'format': 'jsonl', 'worker_peak_mb': 200},
      {'images': 1020000, 'format': 'jsonl', 'worker_peak_mb': 219},
      {'images': 2000, 'format': 'parquet', 'worker_peak_mb': 210},
      {'images': 1020000, 'format': 'parquet', 'worker_peak_mb': 240},
  ])
  assert [r['peak_change'] for r in rows] == [0.0, 0.095, 0.0, 0.143]
  met = {t['name']: t['met'] for t in scale.targets(rows)}
  assert met == {
      'peak RSS per worker, 2,000 images, jsonl (MB)': True,
      'RSS change from the smallest run, 2,000 images, jsonl': True,
      'peak RSS per worker, 1,020,000 images, jsonl (MB)': True,
      'RSS change from the smallest run, 1,020,000 images, jsonl': True,
      'peak RSS per worker, 2,000 images, parquet (MB)': True,
      'RSS change from the smallest run, 2,000 images, parquet': True,
      'peak RSS per worker, 1,020,000 images, parquet (MB)': True,
      'RSS change from the smallest run, 1,020,000 images, parquet': False,
  }
  assert '| 1,020,000 | parquet |' in scale.markdown([dict(
      rows[3], wall_seconds=60.0, images_per_second=17000, manifest_seconds=2.0,
      manifest_share=0.03, manifest_parts=11, manifest_bytes_per_image=41.1)])


def test_bounds_count_the_rows_hash_once_and_the_larger_runs_fixed_steps_per_core():
  from bench import bounds
  steps = {bounds.NAME: 2.4, bounds.SHA256: 7.8, bounds.ROW: 9.4, bounds.ENTRY: 1.8}
  assert bounds.guarantees(steps) == pytest.approx(
      {'name': 2.4, 'sha256': 7.8, 'row beyond its hash': 1.6, 'entry': 1.8})
  # (d): the floor plus the 13.6 us only the job spends.
  d = bounds.passthrough_bound(36.6, 55.0, steps, '(d)', 0.8)
  assert d.ratio == pytest.approx(36.6 / 50.2) and not d.within
  assert 'guarantees 13.6' in d.arithmetic and '0.67 of the floor' in d.arithmetic
  # (a): run 9's walls and work (3.31 / 1.03 s at 4,000 images, 8.14 / 5.66 s at 20,000)
  # leave 0.2 s more outside the work: 25 us an image on each of 2 cores.
  fixed = bounds.fixed_growth_us(3.31, 1.03, 8.14, 5.66, 16000, 2)
  assert fixed == pytest.approx(25.0)
  assert bounds.fixed_growth_us(3.31, 1.03, 3.31, 1.03, 0, 2) == 0
  assert bounds.fixed_growth_us(3.31, 1.03, 8.0, 6.0, 16000, 2) == 0  # nothing added
  a, moonshot = bounds.steady_bounds(507.0, 517.0, fixed, steps,
                                     {'(a)': 0.9, '(a) moonshot': 1.0})
  assert a.ratio == moonshot.ratio == pytest.approx(507 / 542)
  assert a.within and not moonshot.within
  assert (a.target, a.goal, moonshot.target, moonshot.goal) == ('(a)', 0.9, '(a) moonshot', 1.0)


def test_make_bench_rewrites_only_its_sections_of_docs_benchmarks_md(tmp_path, monkeypatch):
  """`make bench` fills docs/benchmarks.md between its markers (bench/run.py's whole-job
  section, bench/scale.py's table) and leaves every other line of the page alone; the
  committed page holds each marker once, with the targets and bounds in one table."""
  from bench import run, scale
  text = open(run.DOCS, encoding='utf-8').read()
  for mark in (run.START_MARK, run.END_MARK, scale.BEGIN, scale.END):
    assert text.count(mark) == 1, mark
  assert '| target | measured | goal | | bound | | arithmetic |' in text
  results = {
      'date': '2027-01-01', 'machine': {'cores': 2, 'python': '3.11.7'}, 'repeat': 2,
      'scratch': '/dev/shm', 'figures': {},
      'hour': 'this hour: import apache_beam 1.50 s, expert (a) 3,800 img/s',
      'rows': [{'case': 'a/job', 'system': 'job', 'images': 4000, 'wall_seconds': 3.5,
                'timed_seconds': 0, 'rate': 1142.9, 'tree_peak_mb': 900,
                'worker_peak_mb': 237}],
      'targets': [{'name': '(a) steady', 'value': 0.93, 'op': '>=', 'goal': 0.9, 'met': True},
                  {'name': 'start-up', 'value': 1.7, 'op': '<=', 'goal': 1.6, 'met': False}],
      'bounds': [{'target': '(a) steady', 'ratio': 0.95, 'goal': 0.9, 'within': True,
                  'arithmetic': 'expert 575 / job 605 = 0.95'}]}
  filled = run.fill_section(text, run.markdown(results))
  head, tail = text.split(run.START_MARK)[0], text.split(run.END_MARK)[1]
  assert filled.startswith(head) and filled.endswith(tail)
  assert '| a/job | unrecord | 4,000 | 3.50 | 1,143 | 900 | 237 |' in filled
  assert ('| (a) steady | 0.93 | >= 0.9 | met | 0.95 | within | '
          'expert 575 / job 605 = 0.95 |') in filled
  assert '| start-up | 1.70 | <= 1.6 | **missed** | - | |  |' in filled
  assert ('`--steps`, us an image); this hour: import apache_beam 1.50 s, expert (a) 3,800 '
          'img/s:') in filled
  with pytest.raises(SystemExit):
    run.fill_section(text.replace(run.END_MARK, ''), run.markdown(results))
  # The scale table, rewritten in a copy of the page as `python -m bench.scale` does.
  page = tmp_path / 'benchmarks.md'
  page.write_text(filled, encoding='utf-8')
  monkeypatch.setattr(scale, 'DOCS', str(page))
  scale.update_docs([{'images': 2000, 'format': 'jsonl', 'wall_seconds': 2.5,
                      'images_per_second': 800, 'worker_peak_mb': 237, 'peak_change': 0.0,
                      'manifest_seconds': 0.1, 'manifest_share': 0.04, 'manifest_parts': 1,
                      'manifest_bytes_per_image': 468.8}])
  rewritten = page.read_text(encoding='utf-8')
  assert rewritten.split(scale.BEGIN)[0] == filled.split(scale.BEGIN)[0]
  assert rewritten.split(scale.END)[1] == filled.split(scale.END)[1]
  assert '| 2,000 | jsonl | 2.5 | 800 | 237 | +0.0% | 0.1 | 0.04 | 1 | 468.8 |' in rewritten


def test_shards_bench_measures_files_tar_and_parquet_locally_and_on_s3(tmp_path):
  """bench.shards as `make bench` runs it (there at 10^6 local and 15,000 S3 images),
  tiny: each output exported and checked, its objects, bytes and store requests
  counted, and the requests per 10^6 images computed from them."""
  done = subprocess.run(
      [sys.executable, '-m', 'bench.shards', '--local', '200', '--s3', '120',
       '--no_docs', '--scratch', str(tmp_path), '--out', str(tmp_path / 'shards.json')],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  runs = {(r['store'], r['pack']): r for r in result['runs']}
  assert set(runs) == {(s, p) for s in ('local', 's3') for p in ('files', 'tar', 'parquet')}
  for (store, pack), r in runs.items():
    assert r['images'] == (200 if store == 'local' else 120) and r['measured']
    assert r['wall_seconds'] > 0
    # The rate is of the unrounded wall; the wall is shown to 0.01 s (0.005 either way).
    slack = 0.5 + r['images'] * 0.005 / (r['wall_seconds'] - 0.005) ** 2
    assert abs(r['images_per_second'] - r['images'] / r['wall_seconds']) <= slack, r
    # A file per image, or one shard (one input file, under the default 1GB).
    assert r['image_objects'] == (r['images'] if pack == 'files' else 1), r
    assert r['objects'] > r['image_objects'] and r['bytes'] > 0
  for pack in ('files', 'tar', 'parquet'):
    s3 = runs[('s3', pack)]
    assert s3['puts'] == s3['image_puts'] + s3['own_puts']
    assert s3['puts_per_image'] == round(s3['puts'] / 120, 4) and s3['lists'] >= 1
  assert runs[('s3', 'files')]['image_puts'] >= 120  # a PUT per image at least
  assert runs[('s3', 'tar')]['image_puts'] < 10
  million = {r['pack']: r for r in result['per_million']}
  assert million['files']['objects'] >= 10 ** 6 and not million['files']['measured']
  assert million['files']['puts'] > 10 * million['tar']['puts']
  assert million['tar']['put_ratio_vs_files'] > 1
  assert million['files']['list_pages_to_read_back'] >= 1000
  assert 'per 10^6 images on a store, tar' in done.stdout
  saved = json.loads((tmp_path / 'shards.json').read_text())
  assert saved == result


def test_fixed_costs_splits_a_whole_export_into_phases_that_add_up_to_its_wall(tmp_path):
  data = tmp_path / 'data'
  data.mkdir()
  _float_photos(data, 8, 64)
  def split_of(*extra):
    result = subprocess.run(
        [sys.executable, '-m', 'bench.fixed_costs', '--input', str(data), '--runs', '1',
         '--scratch', str(tmp_path / 'scratch'), '--json', *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (split,) = json.loads(result.stdout.splitlines()[-1]).values()
    return split, result

  # A small input runs in the launcher: no pool, no worker process, so no workers phase.
  alone, _ = split_of()
  assert alone['images'] == 8 and alone['phases']['workers'] == 0, alone
  assert alone['pool_warm_seconds'] is None
  assert all(s > 0 for k, s in alone['phases'].items() if k != 'workers'), alone
  assert sum(alone['phases'].values()) == pytest.approx(alone['wall_seconds'], abs=0.01)
  # Beam's options pass through: two worker processes, every phase there.
  split, result = split_of('--direct_num_workers', '2')
  assert split['images'] == 8
  assert list(split['phases']) == ['imports', 'planning', 'graph', 'workers', 'grpc',
                                   'work', 'closing', 'report', 'exit']
  # Consecutive marks of one machine's clocks: each phase took time, and together the
  # whole wall, as the bench saw it from outside.
  assert all(seconds > 0 for seconds in split['phases'].values()), split
  assert sum(split['phases'].values()) == pytest.approx(split['wall_seconds'], abs=0.01)
  assert 0 < split['import_beam_seconds'] < split['wall_seconds']
  # Two cores here: the warm pool forked its workers before the job ended.
  assert 0 < split['pool_warm_seconds'] < split['wall_seconds']
  assert '| **wall** |' in result.stdout
  assert not os.listdir(tmp_path / 'scratch')  # each run's output is removed
