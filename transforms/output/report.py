"""`_report.html`: one self-contained page (inline CSS, images as data URIs) per run."""

from __future__ import annotations

import base64
import collections
import datetime
import html
import json
import os
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from transforms import errors
from transforms.images import render
from transforms.output import export_config
from transforms.output import incremental
from transforms.output import naming
from transforms.output import portability
from transforms.output import root_claim
from transforms.output import root_files
from transforms.output import shards
from transforms.output import sorted_runs
from transforms.pixels import encode
from transforms.pixels import normalize
from transforms.pixels import preview


_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #1d1d1f; background: #fafafa; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.status { display: inline-block; padding: 2px 10px; border-radius: 12px; color: #fff; }
.ok { background: #1a7f37; } .failed { background: #c62828; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; margin: 16px 0; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: 10px 16px;
        min-width: 110px; }
.card b { display: block; font-size: 22px; }
table { border-collapse: collapse; background: #fff; }
td, th { border: 1px solid #ddd; padding: 4px 10px; text-align: left; vertical-align: top; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; width: 132px; } figure img { width: 128px; height: 128px; object-fit: contain;
  background: #222; border: 2px solid #222; image-rendering: pixelated; }
figcaption { font-size: 11px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.class { margin-bottom: 12px; } code { font-size: 12px; }
.warning { background: #fff4e5; border: 1px solid #f0a020; padding: 8px 12px; }
"""


def decode_written(data: bytes) -> np.ndarray:
  """The pixels of a written image file (8-bit, 16-bit or float), RGB(A) order."""
  pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
  if pixels is None:
    raise errors.DecodeError(errors.DECODE_ERROR, 'written file cannot be decoded')
  if pixels.ndim == 3:
    pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB if pixels.shape[2] == 3
                          else cv2.COLOR_BGRA2RGBA)
  return pixels


def distinct_captions(names: Sequence[str], keep: int = 4) -> List[str]:
  """Captions that show what tells the names apart: a prefix all of them share (a
  folder, a shard stem) is cut to '…', keeping its last `keep` characters."""
  if len(names) < 2:
    return [n.split('/')[-1] for n in names]
  shared = len(os.path.commonprefix(list(names)))
  if shared <= keep:
    return list(names)
  return ['…' + n[shared - keep:] for n in names]


_THUMBNAIL_PNG = encode.EncodeSpec(format='png')


def thumbnail_png(pixels: np.ndarray) -> bytes:
  """A PNG thumbnail of a written image's pixels (`decode_written`), for the page.

  Encoded by the job's own PNG encoder (fpng for RGB): 0.1 ms a thumbnail where
  Pillow's PNG at its default level took 6.5, 0.3 s of every run's 48 thumbnails."""
  axes = 'hw' if pixels.ndim == 2 else 'hwc'
  shown = normalize.to_display(pixels, axes,
                               None if pixels.dtype in (np.uint8, np.uint16) else
                               normalize.detect_range(pixels))
  return encode.encode(np.asarray(preview.thumbnail(shown)), _THUMBNAIL_PNG)


def _data_uri(png: bytes) -> str:
  return 'data:image/png;base64,' + base64.b64encode(png).decode('ascii')


def _table(pairs: Sequence[Tuple[str, object]]) -> str:
  return '<table>' + ''.join(f'<tr><th>{html.escape(str(k))}</th><td>'
                             f'{html.escape(str(v))}</td></tr>' for k, v in pairs) + '</table>'


def _failure_table(report: dict) -> str:
  rows = report.get('first_failure_rows')
  if rows:
    head = '<tr><th>file</th><th>record</th><th>byte</th><th>reason</th><th>message</th></tr>'
    body = ''.join(
        '<tr>' + ''.join(f'<td>{html.escape("" if v is None else str(v))}</td>' for v in (
            r['source'], r['index'], r['offset'], r['reason'], r['message'])) + '</tr>'
        for r in rows)
    return f'<table>{head}{body}</table>'
  if report.get('first_failures'):  # a run that stopped early: its cause
    return '<ul>' + ''.join(f'<li><code>{html.escape(m)}</code></li>'
                            for m in report['first_failures']) + '</ul>'
  return '<p>No failures.</p>'


def _settled(settled: dict) -> str:
  if not settled:
    return '<p>Not recorded.</p>'
  pairs = [('records', settled.get('record')), ('format', settled.get('format')),
           ('name template', settled.get('name_template')),
           ('label key', settled.get('label_key')), ('id key', settled.get('id_key'))]
  pairs += [(f'image {image["key"]}', render.describe_image(image))
            for image in settled.get('images', ())]
  return _table(pairs)


def render_html(report: dict, samples: Sequence[Tuple[str, str, bytes]]) -> str:
  """The page for one run. `samples`: (class, caption, thumbnail PNG) triples."""
  ok = report['success']
  if ok:
    status = '<span class="status ok">success</span>'
  elif report.get('error'):
    status = f'<span class="status failed">stopped: {html.escape(report["error"])}</span>'
  else:
    status = '<span class="status failed">more failures than --max_failures</span>'
  size = report['bytes_written']
  cards = ''.join(
      f'<div class="card">{name}<b>{value}</b></div>' for name, value in (
          ('written', report['written']), ('passthrough', report['passthrough']),
          ('skipped', report['skipped']), ('failed', report['failed']),
          ('images / s', report['images_per_second']),
          ('seconds', report['seconds']),
          ('MB written', 'unknown' if size is None else round(size / 1e6, 2))))
  reasons = report['failed_by_reason']
  reason_table = _table(sorted(reasons.items())) if reasons else '<p>No failures.</p>'
  groups = collections.OrderedDict()
  for label, caption, png in samples:
    groups.setdefault(label, []).append(
        f'<figure><img alt="{html.escape(caption)}" src="{_data_uri(png)}">'
        f'<figcaption title="{html.escape(caption)}">{html.escape(caption)}'
        '</figcaption></figure>')
  grid = ''.join(
      f'<div class="class">{"<h3>" + html.escape(label) + "</h3>" if label else ""}'
      f'<div class="grid">{"".join(figures)}</div></div>'
      for label, figures in groups.items()) or '<p>No images were written.</p>'
  failures = _failure_table(report)
  options = _table(sorted((k, v) for k, v in report['options'].items()))
  settled = _settled(report.get('settled') or {})
  warnings = ''.join(f'<p class="warning">{html.escape(w)}</p>'
                     for w in report.get('warnings') or ())
  return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>unrecord report</title>
<style>{_STYLE}</style></head><body>
<h1>unrecord export {status}</h1>
<div>{html.escape(report['output'])} &middot; {html.escape(report['started'])} to
{html.escape(report['finished'])}</div>
<div class="cards">{cards}</div>
{warnings}
<h2>Settled at launch</h2>{settled}
<h2>Failures by reason</h2>{reason_table}
<h2>Sample of written images</h2>{grid}
<h2>First failures</h2>{failures}
<h2>Options</h2>{options}
<h2>Inputs</h2><ul>{''.join(f'<li><code>{html.escape(i)}</code></li>'
                             for i in report['inputs'])}</ul>
</body></html>
"""


# ---------------------------------------------------------------------------------------
# Writing the report, and _SUCCESS when it is earned


def write_report(config: export_config.ExportConfig, manifest: dict, dead_letter: dict,
                 spans: Iterable[Tuple[float, float]] = (),
                 names: Optional[dict] = None) -> dict:
  """Writes `_report.json` and `_report.html`, removes temp debris, then `_SUCCESS` if earned.

  `spans`: (start, end) of each record range's work, for the report's `work` block.
  `names`: the output names' portability counts (`portability.combine`), kept as
  `portability`, with a warning, when some name is not portable.
  """
  root = root_files.OutputRoot(config.output, config.read.storage_options)
  root.remove_temp_debris()
  root.remove_tree(sorted_runs.SCRATCH)
  finished = time.time()
  seconds = max(finished - (config.run_started or finished), 1e-9)
  success = dead_letter['failed'] <= config.max_failures
  report = {
      'output': config.output,
      'inputs': list(config.patterns),
      'written': manifest['written'],
      'passthrough': manifest['passthrough'],
      'skipped': manifest['skipped'],
      'failed': dead_letter['failed'],
      'failed_by_reason': dead_letter['failed_by_reason'],
      'first_failures': dead_letter['first_failures'],
      'first_failure_rows': dead_letter.get('first_failure_rows', []),
      'bytes_written': manifest['bytes'],
      'seconds': round(seconds, 3),
      'images_per_second': round(manifest['written'] / seconds, 1),
      'max_failures': config.max_failures,
      'success': success,
      'started': _iso(config.run_started or finished),
      'finished': _iso(finished),
      'options': {k: v for k, v in config.options_used},
      'settled': json.loads(config.choices),
      'warnings': [],
      'skipped_inputs': list(config.skipped_inputs),
  }
  spans = list(spans)
  report['work'] = work_timing(spans, config.run_started or finished)
  # The manifest stage: from the last record range's end to the manifest's commit.
  after_work = (manifest['committed_at'] - max(end for _, end in spans)
                if spans and manifest.get('committed_at') else None)
  report['manifest'] = {
      'format': config.manifest_format, 'parts': manifest.get('parts'),
      'rows': manifest.get('rows'),
      'seconds_after_work': round(after_work, 3) if after_work is not None else None}
  repaired = manifest.get('repaired') or []
  if repaired:  # parts of the previous manifest rebuilt from the image files on disk
    report['manifest']['repaired'] = [
        {k: v for k, v in r.items() if k != 'warning'} for r in repaired]
    report['warnings'] += [r['warning'] for r in repaired]
  for image in report['settled'].get('images', ()):  # a normalization read as it is
    if image.get('suggested'):
      report['warnings'].append(image['suggested']['warning'])
  line = portability.describe(names)
  if line:  # only then: a root whose names are all portable keeps its report as it was
    report['portability'] = names
    report['warnings'].append(line)
  if manifest.get('shards'):  # --pack: transforms/shards.py's index summary
    report['shards'] = manifest['shards']
  if config.incremental:
    report['incremental'] = {'shards_processed': len(config.processed),
                             'stale_images_removed': manifest.get('stale_removed', 0)}
  _write_report_files(root, report, manifest['samples'])
  if success:
    if config.incremental:
      incremental.write_state(root, config.processed, dict(config.settings))
    root.write(naming.SUCCESS, b'')
  if config.lock_run_id:
    root_claim.release_lease(root, config.lock_run_id)
  return report


def write_failure_report(config: export_config.ExportConfig, cause: str,
                         counts: Optional[Dict[str, int]]) -> bool:
  """After a run that stopped early (a storage fault, Ctrl-C, the runner failing): removes
  its temp files, then writes `_report.json`/`_report.html` saying so, with the images
  written so far (`counts` from the progress monitor; None where the launcher has none).

  Never raises: returns False when the root cannot take even that (it may be the fault).
  `_SUCCESS` stays absent, and the manifest is left as the last finished run wrote it.
  """
  try:
    root = root_files.OutputRoot(config.output, config.read.storage_options)
    root.remove_temp_debris()
    root.remove_tree(sorted_runs.SCRATCH)
    finished = time.time()
    counts = counts or {}
    report = {
        'output': config.output, 'inputs': list(config.patterns), 'success': False,
        # Counts the workers had reported when the run stopped: lower bounds.
        'error': cause, 'written': None, 'skipped': None, 'failed': None,
        'reported_so_far': {k: counts[k] for k in ('written', 'skipped', 'failed')
                            if k in counts},
        'passthrough': None, 'failed_by_reason': {}, 'first_failures': [cause],
        'bytes_written': None, 'max_failures': config.max_failures,
        'seconds': round(finished - (config.run_started or finished), 3),
        'images_per_second': None, 'started': _iso(config.run_started or finished),
        'finished': _iso(finished), 'options': {k: v for k, v in config.options_used},
        'work': None,
    }
    _write_report_files(root, report, [])
    return True
  except Exception:  # pylint: disable=broad-except
    return False


def work_timing(spans: Iterable[Tuple[float, float]], run_started: float
                ) -> Optional[dict]:
  """When the workers worked on record ranges, against the whole run (None: no range).

  `seconds` runs from the first range's start to the last range's end: the job without
  its start-up (`startup_seconds`: launch, planning, workers starting) and without the
  manifest merge and report after it. `range_seconds` sums every range's own time; over
  `seconds`, it tells how many workers were busy on average. Spans are the workers'
  clocks; `startup_seconds` sets the first against the launcher's, so on a cluster it
  is only as good as their clocks agree (NTP keeps Dataflow's VMs within milliseconds).
  """
  spans = list(spans)
  if not spans:
    return None
  first, last = min(s for s, _ in spans), max(e for _, e in spans)
  busy = sum(e - s for s, e in spans)
  return {'ranges': len(spans), 'seconds': round(last - first, 3),
          'startup_seconds': round(first - run_started, 3),
          'range_seconds': round(busy, 3),
          'mean_busy_workers': round(busy / (last - first), 2) if last > first else None}


# More than this share of the report's sampled images being one flat value warns: the
# value range, the image key or the layout was probably settled wrong.
UNIFORM_WARNING_SHARE = 0.05


def _write_report_files(root: root_files.OutputRoot, report: dict,
                        samples: List[dict]) -> None:
  """`_report.json`, then `_report.html`, whose sample grid is left out rather than fail
  the run. The sampled images are looked at first: too many uniform ones add a warning."""
  try:
    thumbnails, uniform = _thumbnails(root, samples)
  except Exception:  # pylint: disable=broad-except  (a picture is never worth a failed run)
    thumbnails, uniform = [], 0
  if thumbnails and uniform > UNIFORM_WARNING_SHARE * len(thumbnails):
    report.setdefault('warnings', []).append(
        f'{uniform} of {len(thumbnails)} sampled images are uniform (every pixel the same '
        'value): check the settled value range, image key and layout (_report.json '
        '"settled")')
  root.write(naming.REPORT, (json.dumps(report, indent=2, sort_keys=True) + '\n').encode())
  try:
    page = render_html(report, thumbnails)
  except Exception:  # pylint: disable=broad-except
    page = render_html(report, [])
  root.write(naming.REPORT_HTML, page.encode('utf-8'))


def _thumbnails(root: root_files.OutputRoot, rows: List[dict]):
  """(class, caption, thumbnail PNG) for the report's sample grid, in class order, and
  how many of those images are uniform."""
  samples, uniform = [], 0
  for row in rows:
    try:
      pixels = decode_written(shards.read_image(root, row))
      png = thumbnail_png(pixels)
    except Exception:  # pylint: disable=broad-except  (a picture is never worth a failed run)
      continue
    uniform += bool(pixels.size) and pixels.min() == pixels.max()
    label = row.get('label_name') or row.get('label')
    order = row['label'] if isinstance(row.get('label'), int) else float('inf')
    samples.append((order, '' if label is None else str(label), row, png))
  samples.sort(key=lambda s: (s[0], s[1]))  # stable: path order within a class
  captions = distinct_captions(
      [str(row['id']) if row.get('id') is not None else row['path']
       for _, _, row, _ in samples])
  return ([(label, caption, png) for (_, label, _, png), caption in zip(samples, captions)],
          uniform)


def _iso(epoch: float) -> str:
  return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(
      timespec='seconds')
