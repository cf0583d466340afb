"""Running a native decoder in a child process, so a crash there cannot kill the worker.

Pillow and OpenCV decode in C. A hostile encoded image that makes them segfault or abort
would take the Beam worker down with it and fail the bundle again on every retry.
`IsolatedCall` runs the decoding function in a long-lived child process (one per DoFn
instance, started with `spawn`, which is safe in gRPC's threaded worker); if the child
dies, or does not answer within the timeout, the image fails with `decode_error` naming
the signal, the child is restarted, and the job goes on.
"""

from __future__ import annotations

import importlib
import multiprocessing
import signal
from typing import Callable, Optional

from transforms import errors

DEFAULT_DECODER = 'transforms.pixels.image_formats:decode_encoded'
DEFAULT_TIMEOUT_SECONDS = 60.0


def resolve(target: str) -> Callable:
  """'package.module:function' -> the function."""
  module_name, _, function_name = target.partition(':')
  if not module_name or not function_name:
    raise errors.ConfigError(f'decoder must be MODULE:FUNCTION, got {target!r}')
  return getattr(importlib.import_module(module_name), function_name)


class DirectCall:
  """Calls `target` (MODULE:FUNCTION) in this process; the same interface as IsolatedCall."""

  def __init__(self, target: str = DEFAULT_DECODER):
    self._function = resolve(target)

  def __call__(self, *args):
    return self._function(*args)

  def close(self) -> None:
    pass


def _serve(connection, target: str) -> None:
  """The child's loop: call the function for each request, send back value or error."""
  function = resolve(target)
  while True:
    try:
      args = connection.recv()
    except EOFError:
      return
    try:
      connection.send((True, function(*args)))
    except errors.UnrecordError as e:
      connection.send((False, e))
    except Exception as e:  # a decoder's own exception, reported as the image's failure
      connection.send((False, errors.DecodeError(
          errors.DECODE_ERROR, f'the decoder raised {type(e).__name__}: {e}')))


class IsolatedCall:
  """Calls `target` (MODULE:FUNCTION) in a child process; a crash becomes a DecodeError."""

  def __init__(self, target: str = DEFAULT_DECODER,
               timeout: float = DEFAULT_TIMEOUT_SECONDS):
    self._target = target
    self._timeout = timeout
    self._context = multiprocessing.get_context('spawn')
    self._process: Optional[multiprocessing.Process] = None
    self._connection = None

  def _start(self) -> None:
    parent, child = self._context.Pipe()
    self._process = self._context.Process(target=_serve, args=(child, self._target),
                                          daemon=True)
    self._process.start()
    child.close()
    self._connection = parent

  def __call__(self, *args):
    if self._process is None or not self._process.is_alive():
      self._start()
    try:
      self._connection.send(args)
      if not self._connection.poll(self._timeout):
        self._stop()
        raise errors.DecodeError(
            errors.DECODE_ERROR,
            f'the decoder did not finish within {self._timeout:g} s on this image; it was '
            'stopped')
      ok, value = self._connection.recv()
    except (EOFError, BrokenPipeError, ConnectionResetError):
      exitcode = self._stop()
      raise errors.DecodeError(
          errors.DECODE_ERROR,
          f'the decoder crashed ({_describe_exit(exitcode)}) on this image; it ran in an '
          'isolated process, so only this image failed') from None
    if ok:
      return value
    raise value

  def _stop(self) -> Optional[int]:
    process, self._process = self._process, None
    if self._connection is not None:
      self._connection.close()
      self._connection = None
    if process is None:
      return None
    process.join(1.0)
    if process.is_alive():
      process.kill()
      process.join()
    return process.exitcode

  def close(self) -> None:
    self._stop()


def _describe_exit(exitcode: Optional[int]) -> str:
  if exitcode is not None and exitcode < 0:
    try:
      return f'killed by {signal.Signals(-exitcode).name}'
    except ValueError:
      return f'killed by signal {-exitcode}'
  return f'exit status {exitcode}'
