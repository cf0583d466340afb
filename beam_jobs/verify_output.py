"""`unrecord verify ROOT`: whether an export's output root is whole (transforms/output/verify.py).

    unrecord verify ROOT [--json] [--limit N] [--jobs N] [--quiet]
        [--storage_options JSON]

Exit status: 0 whole; 1 not whole (the summary lists what is wrong); 2 bad usage or
not an output root; 3 the storage cannot be reached or read. No pipeline runs.
"""

from __future__ import annotations

import json
import sys
from typing import Optional, Sequence

from beam_jobs import options
from transforms import errors
from transforms import plan
from transforms.output import verify as verify_lib

PROG = 'unrecord verify'


def build_parser():
  parser = options.OneLineParser(
      prog=PROG, description='Check that an output root is whole: every manifest part '
      'and row, each file\'s size and checksum, files no row names, and _SUCCESS '
      'against _report.json. Exit 0 when whole, 1 when not, 2 for bad usage, 3 when '
      'the storage cannot be read.',
      epilog=options.docs_pointer(('docs/output.md ("Verify an output")',)))
  parser.add_argument('--version', action='version',
                      version=f'unrecord {options.version()}')
  parser.add_argument('root', metavar='ROOT',
                      help='The export\'s --output: a path or any fsspec URL (gs://, '
                      's3://).')
  parser.add_argument('--json', action='store_true',
                      help='Print one JSON object on stdout: the counts and every '
                      'problem.')
  parser.add_argument('--limit', type=int, default=20, metavar='N',
                      help='Problems the text summary lists (the counts cover all). '
                      'Default: 20.')
  parser.add_argument('--jobs', type=int, default=None, metavar='N',
                      help='Files read (or asked of the store) at once. Default: twice '
                      'the cores on a local disk, 32 on an object store.')
  parser.add_argument('--quiet', action='store_true',
                      help='No progress line on stderr.')
  parser.add_argument('--storage_options', default=None, metavar='JSON',
                      help='fsspec filesystem settings per protocol, as for export.')
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
  if args.jobs is not None and args.jobs < 1:
    return options.fail(PROG, '--jobs must be 1 or more')
  if args.limit < 0:
    return options.fail(PROG, '--limit must be 0 or more')
  try:
    storage_options = plan.parse_storage_options(args.storage_options)
    root = verify_lib.open_root(args.root, storage_options)
    summary = verify_lib.verify(
        root, jobs=args.jobs,
        progress=lambda total: verify_lib.Progress(total, quiet=args.quiet))
  except (errors.ConfigError, verify_lib.NotARoot) as e:
    return options.fail(PROG, str(e))
  except verify_lib.Unreachable as e:
    print(f'{PROG}: error: {e}', file=sys.stderr)
    return 3
  except KeyboardInterrupt:
    print(f'{PROG}: interrupted (Ctrl-C); nothing was changed', file=sys.stderr)
    return 130
  if args.json:
    json.dump(summary.to_json(), sys.stdout)
    sys.stdout.write('\n')
  else:
    print(summary.text(args.limit))
  return 0 if summary.whole else 1


if __name__ == '__main__':
  sys.exit(main())
