"""The `unrecord` console script: `unrecord inspect ...`, `unrecord export ...`,
`unrecord verify ROOT`."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from typing import Optional, Sequence

USAGE = """usage: unrecord COMMAND [options]

  unrecord --version

commands:
  inspect   show what TFRecords hold and the image schema unrecord detects
  export    write the images in TFRecords to image files (a Beam pipeline)
  verify    check that an output root is whole: manifest, files, checksums

Run `unrecord COMMAND --help` for a command's options. More: README.md and
docs/ in the unrecord repository (docs/README.md lists every page)."""


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ('-h', '--help'):
    print(USAGE)
    return 0 if argv else 2
  if argv[0] in ('-V', '--version'):
    from beam_jobs import options
    print(f'unrecord {options.version()}')
    return 0
  command, rest = argv[0], argv[1:]
  if command == 'inspect':
    from beam_jobs import inspect_records
    return inspect_records.main(rest)
  if command == 'export':
    return export(rest)
  if command == 'verify':
    from beam_jobs import verify_output
    return verify_output.main(rest)
  print(f'unrecord: error: unknown command {command!r}\n\n{USAGE}', file=sys.stderr)
  return 2


def export(argv: Sequence[str]) -> int:
  """`unrecord export`: Ctrl-C or SIGTERM before the run starts ends with one line too."""
  # Warm local workers start importing Beam now, alongside this process.
  from beam_jobs import signals
  from beam_jobs import worker
  pool = None
  try:
    pool = worker.start_for(list(argv))
    # A local run never talks to Google Cloud: Beam is imported without its clients.
    from beam_jobs import held_imports
    with (held_imports.held_back() if worker.runs_locally(list(argv))
          else contextlib.nullcontext()):
      from beam_jobs import export_images
    signals.raise_on_sigterm()
    return export_images.main(argv, pool=pool)
  except KeyboardInterrupt:
    print('unrecord export: interrupted (Ctrl-C) before the run started; nothing was '
          'written', file=sys.stderr)
    return 130
  except signals.Terminated:
    print('unrecord export: interrupted (SIGTERM) before the run started; nothing was '
          'written', file=sys.stderr)
    return 143
  finally:
    if pool is not None:
      pool.close()


def run() -> None:
  """The console script: main(), then exit without finalizing the interpreter.

  After a local run, interpreter teardown (gRPC's core shutdown among it) takes about
  0.7 s of a job's wall time. Exit handlers still run (logging is flushed); only the
  module teardown is skipped, as every file the job writes is closed by then.
  """
  code = main()
  atexit._run_exitfuncs()  # pylint: disable=protected-access
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


if __name__ == '__main__':
  run()
