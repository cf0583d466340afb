"""Cost of decoding encoded images in an isolated child process vs in the worker itself.

    python bench/isolation.py

One core; scikit-image's astronaut, 224x224 and 512x512, as PNG and JPEG q90.
"""

import statistics
import time

import cv2
import numpy as np
import skimage.data

from transforms.pixels import image_formats
from transforms.pixels import isolation


def _median_ms(fn, repeats=200):
  fn()
  samples = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    samples.append(time.perf_counter() - start)
  return statistics.median(samples) * 1000


def main():
  call = isolation.IsolatedCall()
  print('| image | direct ms | isolated ms | overhead ms |')
  print('|---|---:|---:|---:|')
  try:
    for size in (224, 512):
      rgb = np.ascontiguousarray(skimage.data.astronaut()[:size, :size])
      bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
      for fmt, data in (('png', cv2.imencode('.png', bgr)[1].tobytes()),
                        ('jpeg', cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY,
                                                            90])[1].tobytes())):
        direct = _median_ms(lambda: image_formats.decode_encoded(data, fmt))
        isolated = _median_ms(lambda: call(data, fmt, image_formats.DEFAULT_MAX_PIXELS))
        print(f'| {size}x{size} {fmt} | {direct:.3f} | {isolated:.3f} | '
              f'{isolated - direct:.3f} |')
  finally:
    call.close()


if __name__ == '__main__':
  main()
