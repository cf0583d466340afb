"""`make bench`: unrecord beside its peers and the floor, on the same data, in one run.

    python -m bench.run                 # full run (< 15 min on 2 cores); updates docs/
    python -m bench.run --quick         # smoke run on tiny data (what `make test` runs)

Every system runs as its own process, as a user runs it, measured by bench.measure
(wall time, peak RSS of the process tree, each process's own peak). Before each run the
previous output is deleted and the page cache's dirty pages are flushed (os.sync), so
no run pays for another's writeback. Images go to /dev/shm by default (--scratch), so
the figures measure the software: this machine's disk moved them 10-30% from run to run.
Each case runs twice (--repeat) and the faster run is kept; cases whose walls are
compared for a steady rate ((a) 2k and 20k, (c), (d), (e)'s four) run in interleaved
rounds, together with the floor their rate is divided by. Every system's output is
checked: the right number of image files, and for PNG, sampled files decode to exactly
the source crop's pixels.

After the targets it prints each steady target's bound on one core, from this code's
own costs (bench/bounds.py): whether a missed target is out of this code's reach or was
missed by the run's hour.

Results go to bench/out/results.json; the full run also rewrites the whole-job section
of docs/benchmarks.md and docs/images/bench.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np

from bench import bounds as bounds_lib
from bench import data as data_lib
from bench import flink as flink_lib
from bench import measure
from bench import verify_root

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, 'docs', 'benchmarks.md')
PLOT = os.path.join(ROOT, 'docs', 'images', 'bench.png')
START_MARK = '<!-- bench:start -->'
END_MARK = '<!-- bench:end -->'
PEERS = ('loop', 'threads', 'tfdata', 'beam_naive')
LABELS = {
    'job': 'unrecord', 'loop': 'loop (protobuf parse + cv2.imwrite)',
    'threads': 'thread pool (parse in main, encode + write in pool)',
    'tfdata': 'tf.data (encode_png + write_file)',
    'beam_naive': 'naive Beam (ReadFromTFRecord + Map)',
    'floor_opencv': 'floor: OpenCV encode + write',
    'floor_job': "floor: unrecord's encoder + write",
    'expert': "expert's script (fork per core, fpng, plain writes)",
    'floor_atomic': 'floor: read + atomic write of the payloads',
    'import_beam': "python -c 'import apache_beam'",
    'per_image': "unrecord's per-range work alone on one core (bench.per_image, CPU)",
    'verify': 'unrecord verify (files, sizes, checksums; rate is files/s)',
    'job_beside_flink': 'unrecord, DirectRunner, in the Flink rounds',
    'flink_loopback': 'unrecord on Flink, LOOPBACK workers (launcher tree only)',
    'flink_external': 'unrecord on Flink, EXTERNAL worker pool (launcher tree only)',
}
# Systems that are the job itself, on some runner (their options are the case's extra).
JOB_SYSTEMS = ('job', 'job_beside_flink', 'flink_loopback', 'flink_external')


@dataclasses.dataclass
class Row:
  """One measured run."""
  case: str
  dataset: str
  system: str
  images: int
  wall_seconds: float
  tree_peak_mb: float
  worker_peak_mb: float
  launcher_peak_mb: float
  timed_seconds: Optional[float] = None  # floors: encode + write only
  # unrecord: first range started to last range done, from _report.json's `work` (the
  # least of the runs): the workers' time without start-up and the manifest merge
  work_seconds: Optional[float] = None

  @property
  def rate(self) -> float:
    """Images per second: whole run, or the timed part for the floors."""
    return self.images / (self.timed_seconds or self.wall_seconds)


@dataclasses.dataclass(frozen=True)
class Case:
  """One system on one dataset: `name` is the row's case, e.g. 'a/job'."""
  name: str
  dataset: data_lib.Dataset
  system: str
  fmt: str
  extra: tuple = ()
  verify: bool = True
  # The case whose data this one repeats (linked shards), for a marginal rate. In the
  # quick smoke run both hold the same data, so this one is not run and its row is that
  # case's.
  scales: str = ''


class Bench:
  """Runs cases, checks their outputs, keeps the rows."""

  def __init__(self, out: str, quick: bool, crops: Dict[str, set], repeat: int = 1,
               scratch: Optional[str] = None):
    self.out = out
    self.scratch = scratch or os.path.join(out, 'runs')
    self.quick = quick
    self.repeat = repeat
    self.rows: List[Row] = []
    self._crops = crops
    self._same_as: Dict[str, str] = {}
    self.one_core: Dict[str, dict] = {}  # bench.per_image --steps, for the bounds
    self.flink_startup: Dict[str, dict] = {}  # bench.flink.startup_split, by workers

  def _fresh(self, name: str) -> str:
    path = os.path.join(self.scratch, name)
    shutil.rmtree(path, ignore_errors=True)
    os.sync()
    return path

  def run(self, case: str, dataset: data_lib.Dataset, system: str, fmt: str,
          extra: tuple = (), verify: bool = True, repeat: int = 0) -> Row:
    """Runs a case `repeat` times (at least the bench's own count): the fastest run's
    times, the largest memory seen."""
    return self.interleaved([Case(case, dataset, system, fmt, extra, verify)], repeat)[0]

  def interleaved(self, cases: List[Case], repeat: int = 0) -> List[Row]:
    """Runs each case `repeat` times (at least the bench's own count), round by round
    (a, b, a, b, ...), so cases whose walls are subtracted or divided see the same hours
    of this machine, whose speed drifts by 10-30% over an hour. One row per case run."""
    if self.quick:
      self._same_as.update((case.name, case.scales) for case in cases if case.scales)
      cases = [case for case in cases if not case.scales]
    runs = {case.name: [] for case in cases}
    for _ in range(max(repeat, self.repeat)):
      for case in cases:
        runs[case.name].append(self._measure(case))
    return [self._keep(case, runs[case.name]) for case in cases]

  def _measure(self, case: Case) -> measure.Measurement:
    if case.system == 'import_beam':  # what start-up is divided by
      command = [sys.executable, '-c', 'import apache_beam']
    elif case.system == 'per_image':  # the export without Beam; its CPU is its clock
      command = _per_image_command(case.dataset, case.dataset.shards, case.fmt, '{output}')
    elif case.system in JOB_SYSTEMS:
      command = [sys.executable, '-m', 'beam_jobs.cli', 'export', '--input',
                 case.dataset.folder, '--output', '{output}', '--format', case.fmt,
                 '--quiet', *case.extra]
      if case.fmt == 'jpeg':
        command += ['--quality', '90']
    else:
      command = [sys.executable, '-m', 'bench.peers', case.system, '--kind',
                 case.dataset.kind, '--input', case.dataset.pattern, '--output', '{output}',
                 '--format', case.fmt, *case.extra]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=ROOT)
    output = self._fresh(case.name)
    measured = measure.run([output if a == '{output}' else a for a in command],
                           env=env, cwd=ROOT)
    if case.verify:
      self._verify(output, case.dataset, case.fmt)
    if case.system in JOB_SYSTEMS:
      with open(os.path.join(output, '_report.json')) as f:
        work = json.load(f).get('work') or {}
      measured.result = {'work_seconds': work.get('seconds')}
    shutil.rmtree(output, ignore_errors=True)
    return measured

  def _keep(self, case: Case, runs: List[measure.Measurement]) -> Row:
    """The fastest run's times, the largest memory seen."""
    best = min(runs, key=lambda m: (m.result or {}).get('timed_seconds') or m.wall_seconds)
    row = Row(case.name, case.dataset.name, case.system, case.dataset.count,
              best.wall_seconds,
              max(m.tree_peak_rss for m in runs) / 2**20,
              max(m.worker_peak for m in runs) / 2**20,
              max(m.launcher_peak for m in runs) / 2**20,
              (best.result or {}).get('timed_seconds'),
              min((m.result['work_seconds'] for m in runs
                   if (m.result or {}).get('work_seconds')), default=None))
    self.rows.append(row)
    timed_text = f', timed {row.timed_seconds:.2f} s' if row.timed_seconds else ''
    if row.work_seconds:
      timed_text += f', workers {row.work_seconds:.2f} s'
    print(f'  {case.name:<22} {row.wall_seconds:7.2f} s wall{timed_text}, {row.rate:8.0f} '
          f'img/s, tree peak {row.tree_peak_mb:6.0f} MB, worker peak '
          f'{row.worker_peak_mb:5.0f} MB', flush=True)
    return row

  def _verify(self, output: str, dataset: data_lib.Dataset, fmt: str) -> None:
    """Right number of images; sampled PNGs hold exactly a source crop's pixels."""
    import cv2
    images = []
    for folder, _, names in os.walk(output):
      images += [os.path.join(folder, n) for n in names
                 if n.endswith(('.png', '.jpg', '.jpeg')) and not n.startswith('_')]
    if len(images) != dataset.count:
      raise AssertionError(f'{output}: {len(images)} images, expected {dataset.count}')
    sample = random.Random(0).sample(images, min(len(images), 40 if self.quick else 100))
    expected = self._crops.get(dataset.kind)
    for path in sample:
      pixels = cv2.imread(path, cv2.IMREAD_UNCHANGED)
      if pixels is None:
        raise AssertionError(f'{path} does not decode')
      if fmt == 'png' and expected is not None:
        if pixels.ndim == 3:
          pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
        if _digest(pixels) not in expected:
          raise AssertionError(f'{path}: pixels match no source crop')

  def steps(self, dataset: data_lib.Dataset, fmt: str, files: int) -> Dict[str, float]:
    """`bench.per_image --steps` on the dataset's first `files` files, as the job case
    exports them: each step's cost alone on one core, us an image."""
    output = self._fresh('steps')
    command = _per_image_command(dataset, files, fmt, output, '--steps')
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=ROOT))
    shutil.rmtree(output, ignore_errors=True)
    figures = json.loads(done.stdout.splitlines()[-1])
    print(f"  {dataset.name} per_image --steps: {figures['images']:,} images, "
          f"{len(figures['steps'])} steps", flush=True)
    return figures['steps']

  def find(self, case: str) -> Row:
    case = self._same_as.get(case, case)
    return next(r for r in self.rows if r.case == case)


def _per_image_command(dataset: data_lib.Dataset, files: int, fmt: str, output: str,
                       *flags: str) -> List[str]:
  """`bench.per_image --json` on the dataset's first `files` files, with the job case's
  format options."""
  return [sys.executable, '-m', 'bench.per_image', dataset.pattern, '--files', str(files),
          '--output', output, '--json', *flags, '--format', fmt,
          *(['--quality', '90'] if fmt == 'jpeg' else [])]


def _digest(pixels: np.ndarray) -> str:
  return hashlib.sha1(np.ascontiguousarray(pixels.squeeze()).tobytes()).hexdigest()


def source_digests_a(a: data_lib.Dataset) -> Dict[str, set]:
  """(a)'s crops alone, for a run of its cases only (bench.flink)."""
  return {'tensor_f32': {_digest(c) for c in data_lib.crops(a.count, data_lib.SIZE)}}


def source_digests(datasets: Dict[str, data_lib.Dataset]) -> Dict[str, set]:
  color = {_digest(c) for c in data_lib.crops(datasets['a'].count, data_lib.SIZE)}
  gray = {_digest(c) for c in data_lib.crops(datasets['c'].count, data_lib.GRAY_SIZE,
                                             gray=True, seed=1)}
  return {'tensor_f32': color, 'raw_u8': color, 'gray_u8': gray}


def marginal(small: Row, large: Row) -> float:
  """Steady-state images/s: the extra images of the larger run over its extra time.

  NaN when the larger run was not slower (start-up noise swamps tiny quick-mode data).
  """
  extra = large.wall_seconds - small.wall_seconds
  return (large.images - small.images) / extra if extra > 0 else float('nan')


def run_all(args) -> dict:
  out = os.path.abspath(args.out)
  os.makedirs(out, exist_ok=True)
  count, gray_count = (120, 2000) if args.quick else (4000, 60000)
  print(f'bench: building datasets under {args.data} ({count} images, {gray_count} gray)',
        flush=True)
  datasets = data_lib.build(args.data, count=count, gray_count=gray_count)
  a, b, c, d, e = (datasets[k] for k in 'abcde')
  links = os.path.join(out, 'links')
  a_half = data_lib.subset(a, os.path.join(links, 'a_half'), a.shards // 2)
  tiny = data_lib.build(os.path.join(args.data, 'tiny'), count=8, gray_count=8)['a']
  scratch = os.path.join(args.scratch, 'unrecord-bench') if args.scratch else None
  bench = Bench(out, args.quick, source_digests(datasets), args.repeat, scratch)
  cores = os.cpu_count() or 1

  print('bench: (a) float32 tensors -> PNG: the job against the expert script, 4k and 20k',
        flush=True)
  # Steady state is the marginal rate from 4,000 to 20,000 images (the same shards linked
  # five times); the job and the expert script run in the same interleaved rounds, since
  # this VM's speed drifts by 10-30% within the hour a bench takes.
  a_x5 = data_lib.replicated(a, os.path.join(links, 'a_x5'), 1 if args.quick else 5)
  bench.interleaved([Case('a/job', a, 'job', 'png'),
                     Case('a_x5/job', a_x5, 'job', 'png', verify=False, scales='a/job'),
                     Case('a/expert', a, 'expert', 'png'),
                     Case('a_x5/expert', a_x5, 'expert', 'png', verify=False,
                          scales='a/expert')])

  print('bench: (a) the peers, whole runs on 4,000 images; the old floors as context',
        flush=True)
  for peer in PEERS:
    bench.run(f'a/{peer}', a, peer, 'png')
  bench.run('a/floor_opencv', a, 'floor_opencv', 'png')
  bench.run('a/floor_job', a, 'floor_job', 'png')

  print('bench: start-up: 8 images against `import apache_beam`', flush=True)
  # Start-up is a wall a few seconds long, whose noise counts in full: it runs one more
  # time than the other cases, in rounds with the import it is divided by.
  more = 0 if args.quick else args.repeat + 1
  bench.interleaved([Case('tiny/job', tiny, 'job', 'png'),
                     Case('tiny/job_1worker', tiny, 'job', 'png',
                          ('--direct_num_workers', '1')),
                     Case('tiny/import_beam', tiny, 'import_beam', 'png', verify=False)],
                    repeat=more)

  print('bench: (a) on the local Flink cluster, LOOPBACK and EXTERNAL workers, 4k and '
        '20k, with DirectRunner in the same rounds; an 8-image start-up split', flush=True)
  started_cluster = flink_lib.ensure_cluster()
  try:
    os.makedirs(bench.scratch, exist_ok=True)
    with flink_lib.worker_pool(os.path.join(out, 'worker_pool.log')) as external:
      flink_rounds(bench, a, a_x5, tiny, external, 1 if args.quick else args.repeat + 1,
                   ('loopback',) if args.quick else ('loopback', 'external'))
  finally:
    if started_cluster:
      flink_lib.stop_cluster()

  print('bench: (b) raw uint8 -> PNG and JPEG q90, 4k and 20k, against the expert',
        flush=True)
  b_x5 = data_lib.replicated(b, os.path.join(links, 'b_x5'), 1 if args.quick else 5)
  for fmt in ('png', 'jpeg'):
    bench.interleaved([Case(f'b_{fmt}/job', b, 'job', fmt),
                       Case(f'b_x5_{fmt}/job', b_x5, 'job', fmt, verify=False,
                            scales=f'b_{fmt}/job'),
                       Case(f'b_{fmt}/expert', b, 'expert', fmt),
                       Case(f'b_x5_{fmt}/expert', b_x5, 'expert', fmt, verify=False,
                            scales=f'b_{fmt}/expert')])

  print('bench: (c) 28x28 gray -> PNG, per-element overhead, against the expert', flush=True)
  # 60,000 images take the job about 5 s; the steady rate is the marginal one from
  # 60,000 to 180,000 (the same shards linked three times): at 4,000 -> 20,000 the
  # extra images would take 0.4 s, less than the noise between two start-ups.
  c_x3 = data_lib.replicated(c, os.path.join(links, 'c_x3'), 1 if args.quick else 3)
  bench.interleaved([Case('c/job', c, 'job', 'png'),
                     Case('c_x3/job', c_x3, 'job', 'png', verify=False, scales='c/job'),
                     Case('c/expert', c, 'expert', 'png'),
                     Case('c_x3/expert', c_x3, 'expert', 'png', verify=False,
                          scales='c/expert'),
                     Case('c/floor_job', c, 'floor_job', 'png')])

  print('bench: (d) encoded JPEG passthrough, against its atomic floor', flush=True)
  # 4,000 -> 40,000 (the shards linked ten times): passthrough is fast enough that
  # 16,000 extra images would take about a second, in the start-up noise.
  d_x10 = data_lib.replicated(d, os.path.join(links, 'd_x10'), 1 if args.quick else 10)
  bench.interleaved([Case('d/job', d, 'job', 'jpeg'),
                     Case('d_x10/job', d_x10, 'job', 'jpeg', verify=False, scales='d/job'),
                     Case('d/floor_atomic', d, 'floor_atomic', 'jpeg'),
                     Case('d_x10/floor_atomic', d_x10, 'floor_atomic', 'jpeg', verify=False,
                          scales='d/floor_atomic'),
                     Case('d/expert', d, 'expert', 'jpeg'),
                     Case('d_x10/expert', d_x10, 'expert', 'jpeg', verify=False,
                          scales='d/expert')])

  print('bench: (e) one big file, 1 and 2 workers', flush=True)
  # Small split size in quick mode so the tiny file still splits. The steady speed-up is
  # the marginal rate from the file's first tenth (one file, same records) to all of it.
  # Each of its walls moves by up to half a second with start-up alone (the main stage
  # itself scales 1.9-2x), so (e) runs three more rounds than the other cases.
  split = ('--split_size_mb', '1') if args.quick else ()
  e_head = data_lib.head(e, os.path.join(links, 'e_head'), max(e.count // 10, 1))
  bench.interleaved([
      Case(f'{case}/job_{workers}', dataset, 'job', 'png', extra + split)
      for case, dataset in (('e_head', e_head), ('e', e))
      for workers, extra in (('1worker', ('--direct_num_workers', '1')),
                             (f'{cores}workers', ()))
  ], repeat=0 if args.quick else args.repeat + 3)

  print('bench: (a) with each --checksum, and `unrecord verify` of 10^5 small files',
        flush=True)
  checksums = verify_root.CHECKSUMS
  bench.interleaved([Case(f'a/job_{checksum}', a, 'job', 'png', ('--checksum', checksum))
                     for checksum in checksums])
  # (c)'s 28x28 PNGs, linked up to at least 10^5 files (its 60,000 twice).
  many = data_lib.replicated(c, os.path.join(links, 'c_verify'),
                             1 if args.quick else -(-100_000 // c.count))
  for row in verify_root.measure_verify(many, bench.scratch, args.repeat, checksums):
    bench.rows.append(Row(f'c_verify/verify_{row["checksum"]}', many.name, 'verify',
                          row['files'], row['wall_seconds'], row['tree_peak_mb'], 0.0,
                          row['launcher_peak_mb']))
    print(f"  c_verify/verify_{row['checksum']:<7} {row['wall_seconds']:7.2f} s wall, "
          f"{row['files_per_second']:8.0f} files/s ({row['files']:,} files)", flush=True)

  print('bench: memory at 2,000 images (20,000 above; 10^6 in bench.scale)', flush=True)
  bench.run('a_half/job', a_half, 'job', 'png')

  print("bench: bounds on one core: the scripts on one worker, the job's work and its "
        'steps alone', flush=True)
  # Each alone on one core, so no run shares a core (bench/bounds.py). The scripts' cost
  # an image is their marginal from the small run to the large one, as the job's
  # per-range work leaves out its start: their own clock starts at the first fork,
  # which 4,000 images would share. The job's per-range work is taken the same way, in
  # the same rounds: the larger runs write more into memory the host may have taken
  # back, and this VM's speed drifts by 10-30% within the hour. (a)'s steps run on two
  # files (1,000 images): each step is timed over all its images at once, and 4,000
  # 600 KB tensors held in memory would time the host's memory instead (docs: "Why
  # the steady ratios swing").
  one = ('--workers', '1')
  for case, dataset, large_case, large, script, fmt in (
      ('a', a, 'a_x5', a_x5, 'expert', 'png'), ('d', d, 'd_x10', d_x10, 'floor_atomic', 'jpeg')):
    bench.interleaved([Case(f'{case}/{script}_1worker', dataset, script, fmt, one),
                       Case(f'{large_case}/{script}_1worker', large, script, fmt, one,
                            verify=False, scales=f'{case}/{script}_1worker'),
                       Case(f'{case}/job_one_core', dataset, 'per_image', fmt,
                            verify=False),
                       Case(f'{large_case}/job_one_core', large, 'per_image', fmt,
                            verify=False, scales=f'{case}/job_one_core')])
  bench.one_core = {'a_steps': bench.steps(a, 'png', min(2, a.shards)),
                    'd_steps': bench.steps(d, 'jpeg', d.shards)}
  shutil.rmtree(bench.scratch, ignore_errors=True)
  return summarize(bench, args, cores)


def flink_rounds(bench: Bench, a: data_lib.Dataset, a_x5: data_lib.Dataset,
                 tiny: data_lib.Dataset, external: tuple, startup_runs: int,
                 splits: tuple = ('loopback', 'external')) -> None:
  """(a) 4k and 20k on DirectRunner, Flink LOOPBACK and Flink EXTERNAL (`external`: the
  worker pool's runner options) in the same rounds; then the start-up split of each of
  `splits` (the quick run splits LOOPBACK's alone: EXTERNAL's takes 30-45 s here)."""
  runners = (('job_beside_flink', ()), ('flink_loopback', flink_lib.LOOPBACK),
             ('flink_external', external))
  bench.interleaved([Case(f'{case}/{system}', dataset, system, 'png', extra,
                          verify=case == 'a', scales='' if case == 'a' else f'a/{system}')
                     for system, extra in runners
                     for case, dataset in (('a', a), ('a_x5', a_x5))])
  bench.flink_startup = {
      name: flink_lib.startup_split(tiny, bench.scratch, runner, startup_runs, name)
      for name, runner in (('loopback', flink_lib.LOOPBACK), ('external', external))
      if name in splits}


def flink_figures(bench: Bench) -> dict:
  """Steady rates of the Flink rounds, each Flink one over DirectRunner's; the splits."""
  figures = {}
  for system in ('job_beside_flink', 'flink_loopback', 'flink_external'):
    figures[f'a_{system}_steady_img_s'] = marginal(bench.find(f'a/{system}'),
                                                   bench.find(f'a_x5/{system}'))
  for workers in ('loopback', 'external'):
    figures[f'a_flink_{workers}_steady_vs_direct'] = (
        figures[f'a_flink_{workers}_steady_img_s'] / figures['a_job_beside_flink_steady_img_s'])
  figures['flink_startup'] = bench.flink_startup
  return figures


def flink_markdown(rows: List[dict], figures: dict) -> List[str]:
  """The Flink lines of the generated section: steady rates and the start-up split."""
  walls = {row['case']: row['wall_seconds'] for row in rows}
  lines = ['', '(a) on the local Flink cluster (2 slots), steady 4k->20k with DirectRunner in '
           f"the same rounds: DirectRunner {figures['a_job_beside_flink_steady_img_s']:,.0f} "
           f"img/s (walls {walls['a/job_beside_flink']:.1f} s, "
           f"{walls['a_x5/job_beside_flink']:.1f} s); Flink LOOPBACK "
           f"{figures['a_flink_loopback_steady_img_s']:,.0f} "
           f"({figures['a_flink_loopback_steady_vs_direct']:.2f} of it; walls "
           f"{walls['a/flink_loopback']:.1f} s, {walls['a_x5/flink_loopback']:.1f} s); "
           f"Flink EXTERNAL {figures['a_flink_external_steady_img_s']:,.0f} "
           f"({figures['a_flink_external_steady_vs_direct']:.2f}; walls "
           f"{walls['a/flink_external']:.1f} s, {walls['a_x5/flink_external']:.1f} s)."]
  return lines + flink_lib.markdown(figures['flink_startup'])


def summarize(bench: Bench, args, cores: int) -> dict:
  r = bench.find
  job_a = r('a/job')

  def steady(case: str, system: str, small: str = '', large: str = '') -> float:
    return marginal(r(f'{small or case}/{system}'), r(f'{large or case + "_x5"}/{system}'))

  # The expert script and the atomic floor time their own work (first fork to last
  # exit, bench/peers.py): their steady rate is that clock over the larger run. The
  # marginal of their walls is kept too, as context.
  figures = {}
  for case, large in (('a', 'a_x5'), ('b_png', 'b_x5_png'), ('b_jpeg', 'b_x5_jpeg'),
                      ('c', 'c_x3'), ('d', 'd_x10')):
    for system in ('expert', 'floor_atomic') if case == 'd' else ('expert',):
      figures[f'{case}_{system}_steady_img_s'] = r(f'{large}/{system}').rate
      figures[f'{case}_{system}_marginal_img_s'] = steady(case, system, large=large)

  figures.update({
      'a_wall_vs_peer': {p: r(f'a/{p}').wall_seconds / job_a.wall_seconds for p in PEERS},
      'a_steady_img_s': steady('a', 'job'),
      'a_floor_job_img_s': r('a/floor_job').rate,
      'a_floor_opencv_img_s': r('a/floor_opencv').rate,
      'startup_seconds': r('tiny/job').wall_seconds,
      'startup_seconds_1worker': r('tiny/job_1worker').wall_seconds,
      'import_beam_seconds': r('tiny/import_beam').wall_seconds,
      'c_steady_img_s': steady('c', 'job', large='c_x3'),
      'c_floor_job_img_s': r('c/floor_job').rate,
      'd_steady_img_s': steady('d', 'job', large='d_x10'),
  })
  for fmt in ('png', 'jpeg'):
    figures[f'b_{fmt}_steady_img_s'] = steady(f'b_{fmt}', 'job', large=f'b_x5_{fmt}')
    figures[f'b_{fmt}_steady_vs_expert'] = (figures[f'b_{fmt}_steady_img_s'] /
                                            figures[f'b_{fmt}_expert_steady_img_s'])
  figures['a_img_s_by_checksum'] = {c: r(f'a/job_{c}').rate for c in verify_root.CHECKSUMS}
  figures['verify_files_s_by_checksum'] = {
      c: r(f'c_verify/verify_{c}').rate for c in verify_root.CHECKSUMS}
  figures['a_steady_vs_expert'] = figures['a_steady_img_s'] / figures['a_expert_steady_img_s']
  figures['a_steady_vs_floor_job'] = figures['a_steady_img_s'] / figures['a_floor_job_img_s']
  figures['c_steady_vs_expert'] = figures['c_steady_img_s'] / figures['c_expert_steady_img_s']
  figures['d_steady_vs_floor_atomic'] = (figures['d_steady_img_s'] /
                                         figures['d_floor_atomic_steady_img_s'])
  figures['startup_vs_import_beam'] = (figures['startup_seconds'] /
                                       figures['import_beam_seconds'])
  figures.update(flink_figures(bench))
  one, many = r('e/job_1worker'), r(f'e/job_{cores}workers')
  figures['e_speedup_wall'] = one.wall_seconds / many.wall_seconds
  # Steady: the marginal rate over the 9/10 of the file past its first tenth, with many
  # workers against one. The file's first tenth costs the same fixed work (sampling,
  # report thumbnails of the same records); the tiny input, 8 files of one image, does
  # not, and start-up noise counts twice when its wall is taken out of both runs.
  figures['e_steady_img_s_1worker'] = marginal(r('e_head/job_1worker'), one)
  figures['e_steady_img_s'] = marginal(r(f'e_head/job_{cores}workers'), many)
  figures['e_speedup_steady'] = figures['e_steady_img_s'] / figures['e_steady_img_s_1worker']
  # The workers' time on the whole file, from the job's own report: first range started
  # to last range done. Start-up and the manifest merge are outside it, so what is left
  # is how evenly the file's ranges kept every worker busy.
  figures['e_work_seconds_1worker'] = one.work_seconds
  figures['e_work_seconds'] = many.work_seconds
  figures['e_speedup_work'] = one.work_seconds / many.work_seconds
  figures['rss_worker_2k_mb'] = r('a_half/job').worker_peak_mb
  figures['rss_worker_20k_mb'] = r('a_x5/job').worker_peak_mb
  figures['rss_worker_change'] = (figures['rss_worker_20k_mb'] /
                                  max(figures['rss_worker_2k_mb'], 1e-9) - 1)
  targets = [
      ('(a) steady 4k->20k / expert script', figures['a_steady_vs_expert'], '>=', 0.9),
      ('(a) steady 4k->20k / expert (moonshot)', figures['a_steady_vs_expert'], '>=', 1.0),
      ('(c) steady 60k->180k / expert script', figures['c_steady_vs_expert'], '>=', 0.7),
      ('(d) passthrough 4k->40k / atomic floor', figures['d_steady_vs_floor_atomic'], '>=',
       0.8),
      (f'(e) speed-up 1 -> {cores} workers (steady, {r("e_head/job_1worker").images:,}->'
       f'{one.images:,})', figures['e_speedup_steady'], '>=', 1.8),
      ('start-up, 8 images / import apache_beam', figures['startup_vs_import_beam'], '<=',
       1.6),
      ('(a) Flink EXTERNAL steady 4k->20k / Direct', figures['a_flink_external_steady_vs_direct'],
       '>=', 0.8),
      ('(a) 4k whole run vs thread pool', figures['a_wall_vs_peer']['threads'], '>=', 2.5),
      ('(a) 4k whole run vs naive Beam', figures['a_wall_vs_peer']['beam_naive'], '>=', 3.0),
      ('peak RSS per worker, 20k (MB)', figures['rss_worker_20k_mb'], '<=', 400),
      ('RSS change 2k -> 20k', abs(figures['rss_worker_change']), '<=', 0.10),
  ]
  results = {
      'machine': {'cores': cores, 'python': platform.python_version(),
                  'platform': platform.platform()},
      'date': time.strftime('%Y-%m-%d'),
      'quick': args.quick,
      'repeat': args.repeat,
      'scratch': args.scratch or 'disk (bench/out/runs)',
      'rows': [dict(dataclasses.asdict(row), rate=row.rate) for row in bench.rows],
      'figures': figures,
      'targets': [{'name': n, 'value': v, 'op': op, 'goal': g,
                   'met': v >= g if op == '>=' else v <= g} for n, v, op, g in targets],
  }
  results['one_core'] = bench.one_core
  results['hour'] = hour(figures)
  goals = {name: goal for name, _, _, goal in targets}
  results['bounds'] = [dict(dataclasses.asdict(b), within=b.within)
                       for b in one_core_bounds(bench, cores, goals)]
  with open(os.path.join(bench.out, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1)
  print('\nbench: targets')
  for t in results['targets']:
    print(f"  {'met ' if t['met'] else 'MISS'} {t['name']:<40} {t['value']:10.2f} "
          f"(goal {t['op']} {t['goal']}); {results['hour']}")
  print('\nbench: bounds on one core, this code (bench/bounds.py)')
  for b in results['bounds']:
    print(f"  {'within ' if b['within'] else 'BEYOND '} {b['target']:<40} {b['ratio']:6.2f} "
          f"(goal >= {b['goal']}): {b['arithmetic']}; {results['hour']}")
  return results


def hour(figures: dict) -> str:
  """This machine's speed in the run's hour, printed beside every ratio: its own
  `import apache_beam` and the expert script's steady rate on (a), which the start-up
  and the steady ratios divide by (each swings by 10-30% from one hour to the next)."""
  return (f"this hour: import apache_beam {figures['import_beam_seconds']:.2f} s, "
          f"expert (a) {figures['a_expert_steady_img_s']:,.0f} img/s")


def one_core_bounds(bench: Bench, cores: int,
                    goals: Dict[str, float]) -> List[bounds_lib.Bound]:
  """(a)'s and (d)'s bounds from the one-core runs, with (a)'s fixed-step growth from
  its 4,000- and 20,000-image job runs (their wall beyond their work); `goals` are the
  targets' (name: goal)."""
  r, figures = bench.find, bench.one_core
  small, large = r('a/job'), r('a_x5/job')
  fixed = bounds_lib.fixed_growth_us(small.wall_seconds, small.work_seconds,
                                     large.wall_seconds, large.work_seconds,
                                     large.images - small.images, cores)
  expert = timed_us(r('a/expert_1worker'), r('a_x5/expert_1worker'))
  floor = timed_us(r('d/floor_atomic_1worker'), r('d_x10/floor_atomic_1worker'))
  a_work = timed_us(r('a/job_one_core'), r('a_x5/job_one_core'))
  d_work = timed_us(r('d/job_one_core'), r('d_x10/job_one_core'))
  steady = {name: goal for name, goal in goals.items() if name.startswith('(a) steady')}
  passthrough = next(name for name in goals if name.startswith('(d) passthrough'))
  return [*bounds_lib.steady_bounds(expert, a_work, fixed, figures['a_steps'], steady),
          bounds_lib.passthrough_bound(floor, d_work, figures['d_steps'], passthrough,
                                       goals[passthrough])]


def timed_us(small: Row, large: Row) -> float:
  """A system's own cost an image on its own clock: the marginal from the small run to
  the large one, or the one run's average when both are one (the quick smoke run)."""
  if large.images > small.images:
    return (large.timed_seconds - small.timed_seconds) / (large.images - small.images) * 1e6
  return small.timed_seconds / small.images * 1e6


def plot(results: dict, path: str) -> None:
  """Bar chart of images/s per system on dataset (a)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  rows = {row['case']: row for row in results['rows']}
  bars = [(LABELS[p] + ', whole run', rows[f'a/{p}']['rate']) for p in PEERS]
  bars.append(('unrecord, whole run', rows['a/job']['rate']))
  bars.append(('unrecord, steady state', results['figures']['a_steady_img_s']))
  bars.append(("expert's script, steady state (no guarantees)",
               results['figures']['a_expert_steady_img_s']))
  bars.append((LABELS['floor_job'], rows['a/floor_job']['rate']))
  figure, axis = plt.subplots(figsize=(9, 4.2), dpi=110)
  colours = ['#8a8a8a'] * len(PEERS) + ['#1f6fb4', '#1f6fb4', '#c9a227', '#c9a227']
  axis.barh([b[0] for b in bars], [b[1] for b in bars], color=colours)
  for y, (_, value) in enumerate(bars):
    axis.text(value, y, f' {value:,.0f}', va='center', fontsize=8)
  axis.invert_yaxis()
  axis.set_xlabel('images per second (higher is better)')
  axis.set_title(f"224x224 float32 tensors -> PNG, {results['rows'][0]['images']:,} images, "
                 f"{results['machine']['cores']} cores")
  figure.tight_layout()
  figure.savefig(path)
  plt.close(figure)


def markdown(results: dict) -> str:
  """The whole-job section of docs/benchmarks.md."""
  rows = results['rows']
  lines = [START_MARK, '',
           f"Figures from `make bench` on {results['date']}: {results['machine']['cores']} "
           f"cores, Python {results['machine']['python']}. Each case run "
           f"{results['repeat']} time(s) (tiny: one more, (e): three more; cases compared "
           "with each other in interleaved rounds), the fastest kept (memory: the largest "
           "seen); "
           f"images written to `{results['scratch']}`; "
           'whole-run wall time includes interpreter start, imports and every file written.',
           '', '![images per second per system](images/bench.png)', '',
           '| case | system | images | wall s | img/s | tree peak MB | worker peak MB |',
           '|---|---|---:|---:|---:|---:|---:|']
  for row in rows:
    if row['system'] in JOB_SYSTEMS[1:]:
      continue  # the Flink rounds: their walls are in the Flink line below the targets
    timed = f" (timed {row['timed_seconds']:.2f} s)" if row['timed_seconds'] else ''
    if row.get('work_seconds') and row['case'].startswith('e'):
      timed = f" (workers {row['work_seconds']:.2f} s)"
    lines.append(f"| {row['case']} | {LABELS.get(row['system'], row['system'])} | "
                 f"{row['images']:,} | {row['wall_seconds']:.2f}{timed} | {row['rate']:,.0f} | "
                 f"{row['tree_peak_mb']:,.0f} | {row['worker_peak_mb']:,.0f} |")
  figures = results['figures']
  if 'a_img_s_by_checksum' in figures:
    verified = next(row['images'] for row in rows if row['system'] == 'verify')
    lines += ['', '(a) by `--checksum`, whole runs: ' + ', '.join(
        f'{c} {v:,.0f} img/s' for c, v in figures['a_img_s_by_checksum'].items())
        + f'. `unrecord verify` of {verified:,} small files (28x28 PNGs), wall: '
        + ', '.join(f'{c} {v:,.0f} files/s'
                    for c, v in figures['verify_files_s_by_checksum'].items()) + '.']
  # The targets and their bounds in one table: a steady target's bound on one core says
  # whether a miss is out of this code's reach or was the run's hour.
  bounds = {b['target']: b for b in results['bounds']}
  lines += ['', "Targets, and each steady target's bound on one core from this code's own "
            'costs (`bench/bounds.py`: the scripts on one worker, `bench.per_image` and its '
            '`--steps`, us an image)' + (f"; {results['hour']}" if results.get('hour')
                                         else '') + ':', '',
            '| target | measured | goal | | bound | | arithmetic |',
            '|---|---:|---:|---|---:|---|---|']
  for t in results['targets']:
    b = bounds.get(t['name'])
    bound = (f"{b['ratio']:.2f} | {'within' if b['within'] else '**beyond**'} | "
             f"{b['arithmetic']}" if b else '- | | ')
    lines.append(f"| {t['name']} | {t['value']:,.2f} | {t['op']} {t['goal']} | "
                 f"{'met' if t['met'] else '**missed**'} | {bound} |")
  if figures.get('flink_startup'):
    lines += flink_markdown(rows, figures)
  lines += ['', END_MARK]
  return '\n'.join(lines)


def fill_section(text: str, section: str) -> str:
  """`text` (docs/benchmarks.md) with its START_MARK ... END_MARK section replaced."""
  if text.count(START_MARK) != 1 or text.count(END_MARK) != 1:
    raise SystemExit(f'{DOCS} must hold one {START_MARK} ... {END_MARK} section to fill')
  head, rest = text.split(START_MARK, 1)
  _, tail = rest.split(END_MARK, 1)
  return head + section + tail


def update_docs(results: dict) -> None:
  os.makedirs(os.path.dirname(PLOT), exist_ok=True)
  plot(results, PLOT)
  with open(DOCS) as f:
    text = f.read()
  text = fill_section(text, markdown(results))
  with open(DOCS, 'w') as f:
    f.write(text)


def main(argv=None) -> int:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow writes the datasets
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true',
                      help='tiny data, every case once: a smoke run (no docs update)')
  parser.add_argument('--data', help='where the datasets are written, cached between runs '
                      '(default: bench/data, or bench/out/quick/data with --quick)')
  parser.add_argument('--out', help='results and scratch output (default: bench/out, or '
                      'bench/out/quick with --quick)')
  parser.add_argument('--scratch', default='/dev/shm' if os.path.isdir('/dev/shm') else None,
                      help='where the systems write their images (default: /dev/shm, memory-'
                      'backed, so the figures measure the software rather than the disk; '
                      'pass a disk folder to include it)')
  parser.add_argument('--repeat', type=int,
                      help='runs per case, the fastest kept (default: 2, or 1 with --quick)')
  parser.add_argument('--no_docs', action='store_true',
                      help='do not rewrite docs/benchmarks.md and docs/images/bench.png')
  args = parser.parse_args(argv)
  default_out = os.path.join(ROOT, 'bench', 'out', *(['quick'] if args.quick else []))
  args.out = args.out or default_out
  args.repeat = max(args.repeat or (1 if args.quick else 2), 1)
  args.data = args.data or (os.path.join(args.out, 'data') if args.quick
                            else os.path.join(ROOT, 'bench', 'data'))
  started = time.time()
  try:
    results = run_all(args)
  except subprocess.CalledProcessError as e:
    print(f'bench: {e.cmd[2:4]} failed with exit code {e.returncode}:\n{e.stderr}',
          file=sys.stderr)
    return 2
  except flink_lib.ClusterDown as e:
    print(f'bench: {e}', file=sys.stderr)
    return 2
  if not args.quick and not args.no_docs:
    update_docs(results)
    print(f'bench: wrote {DOCS} and {PLOT}')
  print(f'bench: done in {time.time() - started:.0f} s')
  missed = [t['name'] for t in results['targets'] if not t['met']]
  return 1 if missed and not args.quick else 0


if __name__ == '__main__':
  sys.exit(main())
