"""Command-line options shared by the entry points; `transforms.plan` turns their values into
configs (and owns their defaults)."""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import textwrap
from importlib import metadata
from typing import Dict, List, Optional, Sequence

from transforms.images import decode
from transforms.inputs import tfrecord
from transforms.plan import DEFAULT_VALUES as DEFAULTS
from transforms.records import tensor_proto


class Choice:
  """An argparse `type` for an option with choices: any case, and the obvious aliases
  (`jpg`, `tif`, `gz`)."""

  def __init__(self, aliases: Optional[Dict[str, str]] = None):
    self._aliases = aliases or {}

  def __call__(self, text: str) -> str:
    value = text.strip().lower()
    return self._aliases.get(value, value)

  def __repr__(self) -> str:
    return 'choice'


FORMAT_ALIASES = {'jpg': 'jpeg', 'jpe': 'jpeg', 'tif': 'tiff'}
COMPRESSION_ALIASES = {'gz': 'gzip', 'zz': 'zlib', 'uncompressed': 'none', '': 'none'}


def one_line_error(message: str) -> str:
  """argparse's message with a suggestion for a mistyped choice."""
  match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
  if match:
    choices = [c.strip(" '") for c in match.group(2).split(',')]
    close = difflib.get_close_matches(match.group(1).lower(), choices, n=1, cutoff=0.6)
    message = (message[:match.start()] + f'invalid choice {match.group(1)!r}; choose from '
               f'{", ".join(choices)}' + (f' (did you mean {close[0]}?)' if close else ''))
  return message


class OneLineParser(argparse.ArgumentParser):
  """An ArgumentParser whose errors are one line, like every other error of unrecord,
  not the whole usage text first."""

  def error(self, message):
    print(f'{self.prog}: error: {one_line_error(message)}',
          file=sys.stderr)
    sys.exit(2)


def version() -> str:
  try:
    return metadata.version('unrecord')
  except metadata.PackageNotFoundError:
    return 'unknown (not installed)'


_NEGATIVE = re.compile(r'^-(\.?\d|inf|nan)', re.I)


def prepare_argv(argv: Sequence[str]) -> List[str]:
  """The command line as argparse should see it.

  `--value_range -1,1` (and `--mean -0.5`): argparse takes a value starting with '-'
  for an option and fails with 'expected one argument'; such a value is joined with '='.
  `--input a.tfrecord b.tfrecord` (what the shell makes of an unquoted
  `--input 'preds/*.tfrecord'`): existing files after an --input value are inputs too.
  """
  out: List[str] = []
  tokens = list(argv)
  i, after_input = 0, False
  while i < len(tokens):
    token = tokens[i]
    following = tokens[i + 1] if i + 1 < len(tokens) else None
    if (token.startswith('--') and '=' not in token and following is not None and
        _NEGATIVE.match(following)):
      out.append(f'{token}={following}')
      i, after_input = i + 2, False
    elif token == '--input' and following is not None:
      out += [token, following]
      i, after_input = i + 2, True
    elif after_input and not token.startswith('-') and os.path.exists(token):
      out += ['--input', token]
      i += 1
    else:
      out.append(token)
      i, after_input = i + 1, token.startswith('--input=')
  return out


def add_input_arguments(parser, required: bool = True) -> None:
  """Where the records are and how to find the image in them (inspect and export).

  `required=False` for PipelineOptions, which Beam also parses with no arguments at all;
  the export job checks --input itself.
  """
  group = parser.add_argument_group('unrecord input')
  group.add_argument(
      '--input', action='append', required=required, metavar='PATTERN',
      help='TFRecord files: a path, directory, glob or any fsspec URL (gs://, s3://, '
      'memory://). Repeat the flag or separate patterns with commas.')
  group.add_argument(
      '--compression', default=DEFAULTS['compression'], choices=tfrecord.COMPRESSIONS,
      type=Choice(COMPRESSION_ALIASES),
      help='Input compression. auto: from the extension (.gz/.gzip, .zz/.zlib), else '
      'from the file content. Default: auto.')
  group.add_argument(
      '--max_record_size', type=int, default=DEFAULTS['max_record_size'],
      metavar='BYTES',
      help='A record claiming more bytes than this is reported as record_too_large and '
      'never allocated. Default: 268435456 (256 MiB).')
  group.add_argument(
      '--storage_options', default=DEFAULTS['storage_options'], metavar='JSON',
      help='fsspec filesystem settings per protocol, e.g. '
      '\'{"s3": {"endpoint_url": "http://127.0.0.1:9000"}}\'. Merged over fsspec\'s own '
      'configuration (FSSPEC_* environment variables, config files).')
  group.add_argument(
      '--image_key', action='append', default=DEFAULTS['image_key'], metavar='FEATURE',
      help='The feature (or SequenceExample feature list) holding the image. Several '
      '(repeat the flag or separate with commas) write each, named apart by {key}. '
      'Default: detected (an encoded image, a serialized tensor, raw bytes or a numeric '
      'list with a shape).')
  group.add_argument(
      '--label_key', default=DEFAULTS['label_key'], metavar='FEATURE',
      help='The integer class feature. Default: detected (TFDS ClassLabel, "label", ...).')
  group.add_argument(
      '--id_key', default=DEFAULTS['id_key'], metavar='FEATURE',
      help='The feature that identifies a record. Default: detected ("id", "key", '
      '"image/filename", ...).')
  group.add_argument(
      '--label_names', default=DEFAULTS['label_names'], metavar='FILE',
      help='Class names, one per line, line N naming label N. Default: TFDS '
      '<label>.labels.txt beside the shards, when present.')
  group.add_argument(
      '--shape', default=DEFAULTS['shape'], metavar='H,W[,C]',
      help='Shape of raw-byte or list images when the records do not say it.')
  group.add_argument(
      '--dtype', default=DEFAULTS['dtype'], choices=tensor_proto.DTYPE_NAMES, type=Choice(),
      metavar='DTYPE',
      help='dtype of raw-byte images when the records do not say it: '
      f'{", ".join(tensor_proto.DTYPE_NAMES)}. Default: from a dtype feature, else uint8 '
      '(or by byte count: 2 -> uint16, 4 -> float32).')
  group.add_argument(
      '--tensor_layout', default=DEFAULTS['tensor_layout'],
      choices=decode.AXES, type=Choice(),
      help='Axis order of tensors: hwc, chw (NHWC/NCHW for batches), or auto (a trailing '
      'axis of 1-4 is channels, else a leading one). Default: auto.')
  group.add_argument(
      '--decoder_isolation', default=DEFAULTS['decoder_isolation'],
      choices=('on', 'off'), type=Choice(),
      help='on: encoded images (PNG, JPEG, ...) are decoded in a separate process, so a '
      'decoder crash on a hostile image fails only that image. off: decode in the worker, '
      'about 0.35 ms faster per 224x224 image (docs/reliability.md). Default: on.')
  group.add_argument(
      '--max_pixels', type=int, default=DEFAULTS['max_pixels'], metavar='N',
      help='Images with more pixels are rejected (too_many_pixels) before they are '
      f'decoded. Default: {DEFAULTS["max_pixels"]}.')


def docs_pointer(pages: Sequence[str]) -> str:
  """The last lines of a command's --help: the pages of docs/ that hold its reference."""
  return textwrap.fill('More: ' + ', '.join(pages) + ' in the unrecord repository '
                       '(docs/README.md lists every page).', width=78)


def fail(prog: str, message: str) -> int:
  """Prints a usage-style error and returns the exit status for bad input (2)."""
  print(f'{prog}: error: {message}', file=sys.stderr)
  return 2

