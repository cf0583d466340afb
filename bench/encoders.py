"""Per-format encoder timings on a real photo: the measurements behind transforms/pixels/encode.py.

    python bench/encoders.py            # prints a Markdown table for docs/benchmarks.md

One core, one 224x224 crop of scikit-image's astronaut, the median of repeated runs.
"""

import io
import statistics
import time

import cv2
import numpy as np
import skimage.data
from PIL import Image

try:
  import fpng
except ImportError:
  fpng = None


def _median_ms(fn, repeats):
  fn()
  samples = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    samples.append(time.perf_counter() - start)
  return statistics.median(samples) * 1000, len(result)


def _pillow(rgb, fmt, **params):
  out = io.BytesIO()
  Image.fromarray(rgb).save(out, format=fmt, **params)
  return out.getvalue()


def main():
  rgb = np.ascontiguousarray(skimage.data.astronaut()[100:324, 100:324])
  bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
  cases = [
      ('PNG', 'fpng', lambda: fpng.from_ndarray(rgb), 200),
      ('PNG', 'OpenCV default', lambda: cv2.imencode('.png', bgr)[1], 100),
      ('PNG', 'OpenCV level 1', lambda: cv2.imencode(
          '.png', bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1], 100),
      ('PNG', 'Pillow default', lambda: _pillow(rgb, 'PNG'), 30),
      ('JPEG q90 4:2:0', 'OpenCV', lambda: cv2.imencode(
          '.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1], 200),
      ('JPEG q90 4:2:0', 'Pillow', lambda: _pillow(rgb, 'JPEG', quality=90), 200),
      ('JPEG q95 4:4:4', 'OpenCV', lambda: cv2.imencode(
          '.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                        cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])[1], 200),
      ('WebP q95', 'OpenCV', lambda: cv2.imencode(
          '.webp', bgr, [cv2.IMWRITE_WEBP_QUALITY, 95])[1], 30),
      ('WebP q95', 'Pillow', lambda: _pillow(rgb, 'WEBP', quality=95), 30),
      ('WebP lossless', 'OpenCV', lambda: cv2.imencode(
          '.webp', bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])[1], 10),
      ('WebP lossless', 'Pillow', lambda: _pillow(rgb, 'WEBP', lossless=True), 10),
      ('WebP lossless q100', 'Pillow (before 2026-12-02)', lambda: _pillow(
          rgb, 'WEBP', lossless=True, exact=True, quality=100), 5),
      ('WebP lossless method 0', 'Pillow (unrecord)', lambda: _pillow(
          rgb, 'WEBP', lossless=True, exact=True, method=0, quality=50), 30),
      ('TIFF', 'OpenCV (LZW)', lambda: cv2.imencode('.tif', bgr)[1], 100),
      ('TIFF', 'Pillow (raw)', lambda: _pillow(rgb, 'TIFF'), 100),
      ('BMP', 'OpenCV', lambda: cv2.imencode('.bmp', bgr)[1], 200),
      ('BMP', 'Pillow', lambda: _pillow(rgb, 'BMP'), 200),
  ]
  print('| format | encoder | ms / image | bytes |')
  print('|---|---|---:|---:|')
  for fmt, name, fn, repeats in cases:
    if name == 'fpng' and fpng is None:
      continue
    ms, size = _median_ms(fn, repeats)
    print(f'| {fmt} | {name} | {ms:.3f} | {size:,} |')


if __name__ == '__main__':
  main()
