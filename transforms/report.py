"""`_report.html`: one self-contained page (inline CSS, images as data URIs) per run."""

from __future__ import annotations

import base64
import collections
import html
import io
import os
from typing import Hashable, List, Sequence, Tuple

import cv2
import numpy as np

from transforms import errors
from transforms import normalize
from transforms import preview
from transforms import render

SAMPLES_PER_CLASS = 8
MAX_SAMPLES = 48

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


class RowSampler:
  """Manifest rows to show in the report: the first few of each class where labels
  exist, else the first. Fed (class, row) in path order; holds only what it may show.

  Only the first `limit` classes can be shown, so rows of later classes are never kept.
  """

  def __init__(self, per_class: int = SAMPLES_PER_CLASS, limit: int = MAX_SAMPLES):
    self._per_class = per_class
    self._limit = limit
    self._by_class = collections.OrderedDict()

  def add(self, class_key: Hashable, row) -> None:
    bucket = self._by_class.get(class_key)
    if bucket is None:
      if len(self._by_class) >= self._limit:
        return
      bucket = self._by_class[class_key] = []
    if len(bucket) < self._per_class:
      bucket.append(row)

  def chosen(self) -> list:
    buckets = [list(bucket) for bucket in self._by_class.values()]
    chosen = []
    while len(chosen) < self._limit and any(buckets):  # round-robin over classes
      for bucket in buckets:
        if bucket and len(chosen) < self._limit:
          chosen.append(bucket.pop(0))
    return chosen


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


def thumbnail_png(pixels: np.ndarray) -> bytes:
  """A PNG thumbnail of a written image's pixels (`decode_written`), for the page."""
  axes = 'hw' if pixels.ndim == 2 else 'hwc'
  shown = normalize.to_display(pixels, axes,
                               None if pixels.dtype in (np.uint8, np.uint16) else
                               normalize.detect_range(pixels))
  out = io.BytesIO()
  preview.thumbnail(shown).save(out, format='PNG')
  return out.getvalue()


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
