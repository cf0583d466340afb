"""`unrecord export`: TFRecords of images -> image files, on any Beam runner.

    python -m beam_jobs.export_images --input PATTERN --output URL [options] [Beam options]

Launch: parse options, sample the first records to settle the schema (keys, value range,
names) so mistakes fail before any worker starts, build the pipeline from
`transforms.ptransforms.ExportImages`, run it, print a closing summary from `_report.json`.
Exit status: 0 success; 1 more failures than --max_failures; 2 bad options or input;
3 the runner failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import os
import posixpath
import sys
import textwrap
import time
import traceback
from typing import Dict, List, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from beam_jobs import cluster
from beam_jobs import local_runner
from beam_jobs import logs
from beam_jobs import options as common
from beam_jobs.signals import Terminated
from beam_jobs import worker as worker_lib
from transforms import errors
from transforms import plan as plan_lib
from transforms import progress
from transforms import ptransforms
from transforms.images import name_templates
from transforms.images import render
from transforms.output import manifest as manifest_lib
from transforms.output import naming
from transforms.output import report as report_lib
from transforms.output import root_claim
from transforms.output import root_files
from transforms.pixels import encode
from transforms.pixels import normalize
from transforms.plan import DEFAULT_VALUES as DEFAULTS

PROG = 'unrecord export'


class ExportOptions(PipelineOptions):
  """unrecord's own options; every other Beam option passes through unchanged."""

  @classmethod
  def _add_argparse_args(cls, parser):
    common.add_input_arguments(parser, required=False)
    # Groups of at most a screen each in --help (tests/test_cli_traps.py checks it).
    group = parser.add_argument_group('unrecord output and format')
    group.add_argument('--output', default=DEFAULTS['output'], metavar='URL',
                       help='Output root: a folder or any fsspec URL. Required.')
    group.add_argument('--format', default=DEFAULTS['format'], choices=encode.FORMATS,
                       type=common.Choice(common.FORMAT_ALIASES),
                       help='Image format to write (any case; jpg and tif are accepted). '
                       'Default: png.')
    group.add_argument('--quality', type=int, default=DEFAULTS['quality'],
                       help='JPEG and lossy WebP quality, 1-100. Default: 95.')
    group.add_argument('--png_compression', type=int, default=DEFAULTS['png_compression'],
                       metavar='0-9',
                       help='zlib level for PNG (OpenCV/Pillow encoders). Default: the '
                       "encoder's own (fpng has one fixed fast level).")
    group.add_argument('--png_encoder', default=DEFAULTS['png_encoder'],
                       choices=encode.PNG_ENCODERS,
                       type=common.Choice(),
                       help='auto: fpng for 8-bit RGB/RGBA, OpenCV for gray and 16-bit. '
                       'Default: auto.')
    group.add_argument('--webp_lossless', action='store_true',
                       help='Write lossless WebP instead of lossy, at libwebp\'s fastest '
                       'lossless setting (method 0: about 1.5 ms per 224x224 image).')
    group.add_argument('--jpeg_progressive', action='store_true',
                       help='Write progressive JPEG.')
    group.add_argument('--jpeg_subsampling', default=DEFAULTS['jpeg_subsampling'],
                       choices=encode.JPEG_SUBSAMPLING, type=common.Choice(),
                       help='JPEG chroma subsampling. auto: 444 (full colour detail) for '
                       '--quality 90 and up, else 420 (smaller). Default: auto.')
    group.add_argument('--reencode', action='store_true',
                       help='Re-encode images even when the source is already in the '
                       'requested format (default: pass the original bytes through).')
    group = parser.add_argument_group('unrecord names')
    group.add_argument('--name_template', default=DEFAULTS['name_template'],
                       metavar='TEMPLATE',
                       help='Output path relative to --output, with fields {id} {index} '
                       '{n} {stem} {label} {label_name} {split} {ext} and any one-value '
                       f'feature. Default: {name_templates.DEFAULT_TEMPLATE} '
                       f'({name_templates.BATCH_TEMPLATE} for batched records).')
    group.add_argument('--layout', default=DEFAULTS['layout'], choices=('flat', 'class'),
                       type=common.Choice({'classes': 'class'}),
                       help=f'class: {name_templates.CLASS_TEMPLATE}, the class-folder layout '
                       'Keras and torchvision ImageFolder load. Default: flat.')
    group.add_argument('--portable_names', action='store_true',
                       help='Make every output name safe on Windows and unique on '
                       'case-insensitive disks (macOS, Windows): a name part that is '
                       'reserved there, ends in a dot or space, or holds a capital letter '
                       'gets a ~hash suffix of its own text (docs/export.md, "Output names").')
    group = parser.add_argument_group('unrecord re-runs, manifest and success')
    group.add_argument('--skip_existing', action='store_true',
                       help='Leave images whose output file already exists untouched.')
    group.add_argument('--incremental', action='store_true',
                       help='Process only input shards that are new or changed since the '
                       'last successful run (fingerprints in _unrecord_state.json at the '
                       'output root); a changed shard\'s images are rewritten.')
    group.add_argument('--overwrite', action='store_true',
                       help='Replace what the output root holds: after the run, files '
                       'its manifest does not list (an earlier export\'s images, a '
                       'killed run\'s) are removed. Without it, a run into a root that '
                       'another export wrote is refused.')
    group.add_argument('--max_failures', type=int, default=DEFAULTS['max_failures'],
                       metavar='N',
                       help='Exit 0 and write _SUCCESS when at most N images failed. '
                       'Default: 0.')
    group.add_argument('--manifest_format', default=DEFAULTS['manifest_format'],
                       choices=('jsonl', 'parquet'), type=common.Choice(),
                       help='The _manifest/ parts: jsonl (a JSON row per line, for jq, '
                       'grep and any language) or parquet (typed, compressed about 10x, '
                       'for pandas, DuckDB, Spark, BigQuery). Default: jsonl.')
    group.add_argument('--checksum', default=DEFAULTS['checksum'],
                       choices=('sha256', 'crc32c', 'blake3'), type=common.Choice(),
                       help='The checksum each manifest row holds for its file, in a '
                       'column of that name: sha256, crc32c (what GCS keeps for every '
                       'object and S3 for these uploads, so `unrecord verify` of a gs:// '
                       'or s3:// root reads no image) or blake3. Default: sha256.')
    group.add_argument('--manifest_part_rows', type=int,
                       default=DEFAULTS['manifest_part_rows'], metavar='N',
                       help='Rows per manifest part (one worker merges each part). '
                       f'Default: {DEFAULTS["manifest_part_rows"]}.')
    group = parser.add_argument_group('unrecord run and terminal')
    group.add_argument('--quiet', action='store_true',
                       help='No progress display (local runs show a live bar on a '
                       'terminal, else a log line every --progress_interval seconds).')
    group.add_argument('--log_level', default=None, choices=logs.LEVELS,
                       type=common.Choice(), metavar='LEVEL',
                       help="Also show Beam's and the libraries' log lines of LEVEL and up "
                       f'({", ".join(logs.LEVELS)}) on the terminal. Either way they go '
                       f'to the run\'s log, {naming.LOGS}/ under --output, named in the '
                       'closing line.')
    group.add_argument('--progress_interval', type=float, default=10.0, metavar='SECONDS',
                       help='Seconds between progress lines when stderr is not a '
                       'terminal. Default: 10.')
    group.add_argument('--no_wait', action='store_true',
                       help='Submit to a remote runner and exit 0 without waiting (Flex '
                       'Template launchers, schedulers that track the job). The run still '
                       'writes _report.json and _SUCCESS at the end.')
    group.add_argument('--sample_records', type=int, default=DEFAULTS['sample_records'],
                       metavar='N',
                       help='Records read at launch to detect keys and the value range. '
                       'Default: 64.')
    group.add_argument('--split_size_mb', type=int, default=DEFAULTS['split_size_mb'],
                       metavar='MB',
                       help='Uncompressed files larger than this are split into record '
                       'ranges read in parallel; with --pack, ranges of at least the '
                       'shard size, each writing its own shards. Default: 64.')
    norm = parser.add_argument_group('unrecord normalization')
    norm.add_argument('--value_range', default=DEFAULTS['value_range'], metavar='RANGE',
                      help='Range the tensor values mean: auto, 0,1, -1,1, 0,255, '
                      '0,65535, minmax (per image) or LO,HI. Default: auto (decided once '
                      'from the sampled records).')
    norm.add_argument('--mean', default=DEFAULTS['mean'], metavar='M[,M,M]|PRESET',
                      help='Undo a normalization: pixel = value * std + mean, before the '
                      f'range is applied. Presets: {", ".join(sorted(normalize.PRESETS))}.')
    norm.add_argument('--std', default=DEFAULTS['std'], metavar='S[,S,S]|PRESET',
                      help='See --mean (a preset given to --mean sets both).')
    norm.add_argument('--channel_order', default=DEFAULTS['channel_order'],
                      choices=normalize.CHANNEL_ORDERS,
                      type=common.Choice(),
                      help='Channel order of the input tensors. Default: rgb.')
    norm.add_argument('--bit_depth', default=DEFAULTS['bit_depth'],
                      choices=normalize.BIT_DEPTHS,
                      type=common.Choice(),
                      help='auto: 16-bit data stays 16-bit where the format holds it '
                      '(png, tiff), else 8. float: keep float32 values (tiff only). '
                      'Default: auto.')
    norm.add_argument('--non_finite', default=DEFAULTS['non_finite'],
                      choices=normalize.NON_FINITE_POLICIES,
                      type=common.Choice(),
                      help='NaN/Inf: fail sends the image to the dead letter '
                      '(non_finite); clip maps NaN to the low end and +/-Inf to the ends. '
                      'Default: fail.')
    group = parser.add_argument_group('unrecord shards')
    group.add_argument('--pack', default=DEFAULTS['pack'],
                       choices=('files', 'tar', 'parquet'), type=common.Choice(),
                       help='files: a file per image. tar: WebDataset shards '
                       '{stem}-{shard:06d}.tar (KEY.png, KEY.json, KEY.cls); a large '
                       'file cut into record ranges: {stem}-r{k:05d}-{shard:06d}.tar '
                       'for range k. parquet: Parquet shards Hugging Face datasets '
                       'loads. Both with shardindex.json (docs/shards.md). Default: '
                       'files.')
    group.add_argument('--shard_size', default=DEFAULTS['shard_size'], metavar='SIZE',
                       help='Most bytes in a shard, e.g. 1GB, 500MB, 64MiB. Default: 1GB '
                       'unless --shard_samples is given.')
    group.add_argument('--shard_samples', type=int, default=DEFAULTS['shard_samples'],
                       metavar='N', help='Most images in a shard. Default: no limit.')


class _OneLineBeamParser(_BeamArgumentParser):
  def error(self, message):
    raise errors.ConfigError(common.one_line_error(message))


def _beam_parser() -> argparse.ArgumentParser:
  parser = _OneLineBeamParser(allow_abbrev=False)
  seen = {}
  for cls in PipelineOptions.__subclasses__():
    seen.setdefault(str(cls), cls)
  for cls in seen.values():
    cls._add_argparse_args(parser)  # pylint: disable=protected-access
  return parser


def unknown_arguments(argv: Sequence[str]) -> List[str]:
  """Arguments no Beam or unrecord option takes, each with a suggestion if one is close."""
  parser = _beam_parser()
  _, unknown = parser.parse_known_args(list(argv))
  known = [o for action in parser._actions for o in action.option_strings]
  argv = list(argv)
  messages = []
  for arg in unknown:
    message = f'unknown argument {arg!r}'
    if arg.startswith('--'):
      close = difflib.get_close_matches(arg.split('=', 1)[0], known, n=1)
      if close:
        message += f' (did you mean {close[0]}?)'
    elif not arg.startswith('-'):
      at = argv.index(arg) if arg in argv else 0
      before = argv[at - 1] if at else ''
      if before in unknown and before.startswith('-') and '=' not in before:
        continue  # the value of the unknown option just named: one message says it
      message += ': a value with no option before it'
      if _looks_like_a_file(arg):
        # An unquoted pattern the shell expanded leaves its second match stranded.
        folder = posixpath.dirname(arg) or '.'
        suffix = posixpath.splitext(arg)[1]
        message += (f'; if the shell expanded an unquoted pattern, quote the pattern: --input '
                    f"'{folder}/*{suffix}'")
    messages.append(message)
  return messages


def _looks_like_a_file(value: str) -> bool:
  """A file name, as a shell's expansion of a pattern gives: a path or a name.ext."""
  return os.path.exists(value) or '/' in value or bool(posixpath.splitext(value)[1])


def help_text() -> str:
  """unrecord's options first, then a pointer to Beam's."""
  parser = argparse.ArgumentParser(
      prog=PROG, usage=f'{PROG} --input PATTERN --output URL [options] [Beam options]',
      description='Write the images held in TFRecords to image files with Apache Beam.',
      add_help=False)
  ExportOptions._add_argparse_args(parser)  # pylint: disable=protected-access
  beam_names = sorted({o for action in _beam_parser()._actions for o in action.option_strings
                       if not any(o in a.option_strings for a in parser._actions)})
  runner_names = ('--runner', '--direct_num_workers', '--direct_running_mode',
                  '--project', '--region', '--temp_location', '--sdk_container_image',
                  '--environment_type', '--environment_config', '--job_endpoint',
                  '--flink_master', '--flink_version', '--max_num_workers')
  shown = [n for n in runner_names if n in beam_names]
  beam = textwrap.fill(', '.join(shown), width=78, initial_indent='  ',
                       subsequent_indent='  ')
  local = textwrap.fill(
      'Locally the job runs on DirectRunner (its FnApiRunner engine, so Beam never tries '
      'to download Prism) with one worker process per core (one, in the launcher, for a '
      'local input under 8 MB); set --direct_num_workers to change that.', width=78)
  return (f'{parser.format_help()}\nApache Beam options (all accepted, {len(beam_names)} '
          f'in all), most used:\n{beam}\n\n{local}\n\n{common.docs_pointer(DOCS)}\n')


# Where --help sends the reader for the rest (docs/ in the unrecord repository).
DOCS = ('docs/export.md (options, names, formats)',
        'docs/output.md (manifest, exit status)',
        'docs/shards.md (tar, Parquet)',
        'docs/runners.md (Flink, Dataflow)')


def claim_output(request: plan_lib.Request, no_wait: bool) -> Optional[root_claim.Claim]:
  """Checks that --output can be written and takes its lock, before anything is read;
  None without --output (plan_export says what is missing)."""
  if not request.output:
    return None
  plan_lib.check_output_is_a_folder(request.output)
  if request.input:  # refused before the root is made (plan_export also lists the files)
    plan_lib.check_output_outside_inputs(
        plan_lib.input_patterns(request), request.output,
        plan_lib.read_config(request).storage_options, request.overwrite)
  return root_claim.claim_root(
      request.output, plan_lib.read_config(request).storage_options,
      lease_seconds=root_claim.NO_WAIT_LEASE_SECONDS if no_wait else
      root_claim.LEASE_SECONDS)


def describe(plan: plan_lib.Plan, runner: str) -> str:
  """The launch line: what was settled, so a wrong guess shows before any image does."""
  config = plan.config
  choices = json.loads(config.choices)
  images = '; '.join(render.describe_image(image) for image in choices['images'])
  return (f'{PROG}: {plan.files} file(s) of {choices["record"]} records; '
          f'image{"s" if len(choices["images"]) > 1 else ""} {images}; '
          f'-> {config.render.encode.format} as {config.render.name_template!r} under '
          f'{config.output}; runner {runner}')


def failure_counters(result) -> Dict[str, int]:
  """Per-reason failure counts from the runner's Beam counters (empty if it has none)."""
  try:
    counters = result.metrics().query(
        MetricsFilter().with_namespace(ptransforms.NAMESPACE))['counters']
  except (AttributeError, NotImplementedError, KeyError):
    return {}
  totals: Dict[str, int] = {}
  for counter in counters:
    name = counter.key.metric.name
    if name.startswith('failed_') and counter.committed:
      reason = name[len('failed_'):]
      totals[reason] = totals.get(reason, 0) + counter.committed
  return totals


def summary(report: dict, counters: Optional[Dict[str, int]] = None) -> str:
  """The closing line; failures by reason are the Beam counters' sums where available."""
  by_reason = counters or report['failed_by_reason']
  reasons = ', '.join(f'{k}: {v}' for k, v in sorted(by_reason.items()))
  return (f'{PROG}: written {report["written"]} (passthrough {report["passthrough"]}), '
          f'skipped {report["skipped"]}, failed {report["failed"]}'
          + (f' ({reasons})' if reasons else '') +
          f', {report["bytes_written"]} bytes in {report["seconds"]:.1f} s '
          f'({report["images_per_second"]} images/s{_work_rate(report)}) -> '
          f'{report["output"]}'
          + ''.join(f'; warning: {w}' for w in report.get('warnings') or ()))


def _work_rate(report: dict) -> str:
  """'; 510 images/s working, after 14.2 s of start-up': on a cluster most of a small
  run's wall is the job's start-up, which the wall rate above divides by too."""
  work = report.get('work') or {}
  if not work.get('seconds') or not report['written']:
    return ''
  return (f'; {report["written"] / work["seconds"]:.0f} images/s working, after '
          f'{work["startup_seconds"]:.1f} s of start-up')


def main(argv: Optional[Sequence[str]] = None,
         pool: Optional[worker_lib.WarmPool] = None) -> int:
  """Runs the export; `pool`: warm local workers the caller started (beam_jobs.cli)."""
  argv = common.prepare_argv(sys.argv[1:] if argv is None else argv)
  if '-h' in argv or '--help' in argv:
    print(help_text())
    return 0
  if '--version' in argv:
    print(f'unrecord {common.version()}')
    return 0
  started = time.time()
  try:
    unknown = unknown_arguments(argv)
  except errors.ConfigError as e:  # a bad value, e.g. --format gif
    return common.fail(PROG, str(e))
  if unknown:
    return common.fail(PROG, '; '.join(unknown))
  pipeline_options = PipelineOptions(argv)
  args = pipeline_options.view_as(ExportOptions)
  if args.log_level:
    logs.show(args.log_level)
  claim, status = None, None
  try:
    cluster.check_launch(pipeline_options)
    request = plan_lib.Request.from_options(args)
    claim = claim_output(request, args.no_wait)
    plan = plan_lib.plan_export(request, started)
    if claim is not None and not claim.root.local:
      plan.config = dataclasses.replace(plan.config, lock_run_id=claim.run_id)
    claim.start(plan.identity)
    status = _run(plan, claim, pipeline_options, args, argv, pool)
  except errors.ConfigError as e:
    status = common.fail(PROG, str(e))
  except errors.StorageFault as e:
    print(f'{PROG}: error: {e.message}', file=sys.stderr)
    status = 3
  except cluster.RunnerUnavailable as e:
    print(f'{PROG}: error: {e}; nothing was submitted', file=sys.stderr)
    status = 3
  finally:
    if claim is not None:
      # After a storage fault (3) the store may not answer: the launcher waits a few
      # seconds, not the client's whole retry budget, for its lease to be removed.
      claim.release(wait=RELEASE_WAIT_SECONDS if status == 3 else None)
  return status


# How long a failed run waits for an object store to take its lease back.
RELEASE_WAIT_SECONDS = 10.0


def _run(plan: plan_lib.Plan, claim: root_claim.Claim, pipeline_options: PipelineOptions,
         args, argv: Sequence[str], pool: Optional[worker_lib.WarmPool]) -> int:
  """Runs the claimed export; every way it can end prints one closing line (with
  --quiet, only when it ends in an error)."""
  run_log = logs.RunLog(plan.config.output, plan.config.read.storage_options, claim.run_id,
                        plan.config.run_started or time.time())
  try:
    return _run_logged(plan, claim, pipeline_options, args, argv, pool, run_log)
  finally:
    run_log.close()  # where a line has not named it already


def _run_logged(plan: plan_lib.Plan, claim: root_claim.Claim,
                pipeline_options: PipelineOptions, args, argv: Sequence[str],
                pool: Optional[worker_lib.WarmPool], run_log: logs.RunLog) -> int:
  say = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
  if not plan.config.patterns:  # --incremental, and no shard is new or changed
    report = report_lib.write_report(
        plan.config,
        {'written': 0, 'skipped': 0, 'bytes': 0, 'passthrough': 0, 'samples': []},
        {'failed': 0, 'failed_by_reason': {}, 'first_failures': []})
    say(f'{PROG}: no input shard is new or changed since the last run')
    say(summary(report) + f'; log: {run_log.close()}')
    return 0
  runner, runner_instance = local_runner.configure_runner(pipeline_options, argv, pool)
  say(describe(plan, runner))
  skipped = plan_lib.skipped_warning(plan.skipped)
  if skipped:
    say(f'{PROG}: {skipped}')
  local = local_runner.is_local(pipeline_options)
  if local:  # FnApiRunner, or the portable runner's embedded job service
    local_runner.bypass_proxy_for_local_workers()
    local_runner.quiet_beam_noise()
  monitor = None
  if local:  # counts for the closing line of a failed run; shown unless --quiet
    monitor = progress.ProgressMonitor(log_interval=args.progress_interval,
                                       quiet=args.quiet).start()
    if not args.quiet:
      monitor.count_in_background(lambda: plan_lib.count_images(plan))
    plan.config = dataclasses.replace(plan.config, progress=monitor.address)
  # Asked under the claim: no other run can commit a manifest to this root from now on.
  plan.config = dataclasses.replace(
      plan.config, previous_manifest=manifest_lib.any_previous(claim.root))
  submitted = False
  try:
    pipeline = beam.Pipeline(runner=runner_instance, options=pipeline_options)
    _ = pipeline | 'Export' >> ptransforms.ExportImages(
        plan.config, spread=not local_runner.one_worker_here(pipeline_options, runner_instance))
    # The launcher's side of the start-up, in the run log (bench/flink.py splits it).
    log = logging.getLogger(__name__)
    log.info('submitting the job to %s, %.3f s after the launch', runner,
             time.time() - plan.config.run_started)
    result = pipeline.run()
    log.info('the runner took the job (pipeline.run returned)')
    submitted = True
    if getattr(result, 'job', None) is not None and cluster.is_dry_run(pipeline_options):
      say(cluster.write_dry_run(result.job, pipeline_options))
      return 0
    if args.no_wait and not local:
      say(f'{PROG}: submitted to {runner}; not waiting (--no_wait); log: '
          f'{run_log.close()}')
      return 0
    result.wait_until_finish()
  except (KeyboardInterrupt, Terminated) as e:
    return _ended_early(plan, monitor, run_log, interrupted=e)
  except Exception as e:  # the runner's own failure: report it plainly, then exit 3
    # FnApiRunner runs the whole job inside run(); a portable runner only submits it there.
    in_run = runner_instance is not None or \
        pipeline_options.get_all_options().get('runner') in local_runner.LOCAL_RUNNERS
    return _ended_early(plan, monitor, run_log, failure=e, submitted=submitted or in_run,
                        on_flink=cluster.on_flink(pipeline_options))
  finally:
    if monitor is not None:
      monitor.stop()
      logging.getLogger(__name__).info(
          'progress: %d sender(s) in %d worker process(es)', *monitor.senders())
  root = root_files.OutputRoot(plan.config.output, plan.config.read.storage_options)
  report = json.loads(root.read(naming.REPORT))
  line = summary(report, failure_counters(result))
  if not report['success']:
    line += (f'; exit 1: failures {report["failed"]} > --max_failures '
             f'{report["max_failures"]}, so no _SUCCESS (see {naming.DEAD_LETTER_ROWS})')
  line += f'; log: {run_log.close()}'
  if not report['success'] or not args.quiet:
    print(line, file=sys.stderr)
  return 0 if report['success'] else 1


def _ended_early(plan: plan_lib.Plan, monitor: Optional[progress.ProgressMonitor],
                 run_log: logs.RunLog, *, interrupted: Optional[BaseException] = None,
                 failure: Optional[BaseException] = None, submitted: bool = True,
                 on_flink: bool = False) -> int:
  """A run stopped by Ctrl-C/SIGTERM or by the runner: one line, a report, an exit code."""
  counts = monitor.totals() if monitor is not None else None
  started = submitted
  named = None  # a cluster's failure that beam_jobs.cluster can name
  if interrupted is not None:
    signal_name = 'SIGTERM' if isinstance(interrupted, Terminated) else 'Ctrl-C'
    cause = f'interrupted ({signal_name})'
    code = 143 if isinstance(interrupted, Terminated) else 130
  else:
    text = ''.join(traceback.format_exception(failure))
    storage_cause = errors.StorageFault.cause_in(text)
    cause = storage_cause or f'the pipeline failed: {_last_line(text)}'
    named = cluster.explain_failure(text) if on_flink and not storage_cause else None
    if named is not None:
      cause, started = named[0], named[1] and submitted
    code = 3
  logging.getLogger(__name__).error('run ended early: %s', cause, exc_info=failure)
  # An object store that just failed after its client's whole retry budget would take
  # that budget again for each file of a report saying so: no report (and no log) is
  # tried there.
  unreachable = (interrupted is None and storage_cause is not None and
                 '://' in plan.config.output and not plan.config.output.startswith('file://'))
  wrote_report = (not unreachable and
                  report_lib.write_failure_report(plan.config, cause, counts))
  so_far = (f'at least {counts["written"]} image(s) written' if counts is not None else
            'what was written is on the runner')
  if not started and not (counts or {}).get('written'):
    # The job never ran: there is nothing to finish, only the cause to fix.
    line = f'{PROG}: error: {cause}; nothing was written; no _SUCCESS'
  elif named is not None and counts is not None:
    line = (f'{PROG}: error: {cause}; the {counts["written"]} image(s) written so far are '
            f'in {plan.config.output}; no _SUCCESS')
  else:
    line = f'{PROG}: error: {cause}; {so_far}; no _SUCCESS'
  if started and '--skip_existing' not in cause:
    line += '; run the same command with --skip_existing to finish'
  if unreachable:
    line += f'; {naming.REPORT} was not written (the output storage failed)'
  elif not wrote_report:
    line += f'; {naming.REPORT} could not be written either'
  line += f'; log: {run_log.close(copy=not unreachable)}'
  print(line, file=sys.stderr)
  return code


def _last_line(text: str) -> str:
  """The innermost error of a runner's (often nested) error text, in one line."""
  lines = [l.strip() for l in text.replace('\\n', '\n').splitlines() if l.strip()]
  errors_named = [l for l in lines if ': ' in l and l.split(':', 1)[0].split('.')[-1]
                  .endswith(('Error', 'Exception', 'Fault', 'Exit'))]
  chosen = (errors_named or lines or ['(no message)'])[-1]
  return chosen.split(' [while running', 1)[0][:500]


if __name__ == '__main__':
  sys.exit(main())
