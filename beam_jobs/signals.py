"""SIGTERM as an exception, so a scheduler's stop ends a run the way Ctrl-C does.

Its own module (standard library only): `beam_jobs.cli` runs as `__main__`, so a class
defined there would be another class than the one the job imports and catches.
"""

import signal


class Terminated(BaseException):
  """SIGTERM, as schedulers send on a timeout or a cancelled task: ends like Ctrl-C (a
  BaseException, as KeyboardInterrupt is, so no `except Exception` on the way catches it)."""


def _raise_terminated(*_) -> None:
  raise Terminated()


def raise_on_sigterm() -> None:
  """From now on SIGTERM raises Terminated in the main thread."""
  signal.signal(signal.SIGTERM, _raise_terminated)
