"""A decoder that really crashes (segfault) or hangs on marked images, for isolation tests."""

import ctypes
import time

from transforms.pixels import image_formats


def decode(data, fmt=None, max_pixels=image_formats.DEFAULT_MAX_PIXELS):
  if b'CRASH-ME' in data:
    ctypes.string_at(0)  # reads address 0: SIGSEGV, as a native decoder bug would
  if b'HANG-ME' in data:
    time.sleep(3600)
  return image_formats.decode_encoded(data, fmt, max_pixels)
