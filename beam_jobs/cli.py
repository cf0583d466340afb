"""The `unrecord` console script: `unrecord inspect ...`, `unrecord export ...`."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

USAGE = """usage: unrecord COMMAND [options]

commands:
  inspect   show what TFRecords hold and the image schema unrecord detects
  export    write the images in TFRecords to image files (a Beam pipeline)

Run `unrecord COMMAND --help` for a command's options."""


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ('-h', '--help'):
    print(USAGE)
    return 0 if argv else 2
  command, rest = argv[0], argv[1:]
  if command == 'inspect':
    from beam_jobs import inspect_records
    return inspect_records.main(rest)
  if command == 'export':
    from beam_jobs import export_images
    return export_images.main(rest)
  print(f'unrecord: error: unknown command {command!r}\n\n{USAGE}', file=sys.stderr)
  return 2


if __name__ == '__main__':
  sys.exit(main())
