"""`unrecord inspect`: what a set of TFRecords holds, and how unrecord would read it;
or what a shard output (`--pack tar|parquet`) holds.

    python -m beam_jobs.inspect_records --input PATTERN [--limit N] [--json]
        [--contact_sheet FILE.png]
    python -m beam_jobs.inspect_records --input ROOT|SHARD|ROOT/shardindex.json [--json]

Reads only the first --limit records (no pipeline), or a shard output's index and its
first shard. Exit status: 0, or 2 for bad input, 3 when the storage cannot be read.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Optional, Sequence

import numpy as np

from beam_jobs import options
from transforms import errors
from transforms import plan
from transforms.images import decode
from transforms.images import render
from transforms.images import schema as schema_lib
from transforms.inputs import input_files
from transforms.output import naming
from transforms.output import shard_contents
from transforms.pixels import normalize
from transforms.pixels import preview

PROG = 'unrecord inspect'


def build_parser() -> argparse.ArgumentParser:
  parser = options.OneLineParser(
      prog=PROG, description='Show the features of TFRecords and the image schema '
      'unrecord detects in them.',
      epilog=options.docs_pointer(('docs/reading.md (record kinds, detection, inspect)',)))
  parser.add_argument('--version', action='version',
                      version=f'unrecord {options.version()}')
  options.add_input_arguments(parser)
  group = parser.add_argument_group('inspect output')
  group.add_argument('--limit', type=int, default=16, metavar='N',
                     help='How many records to sample from the start. Default: 16.')
  group.add_argument('--json', action='store_true',
                     help='Print exactly one JSON object on stdout instead of tables.')
  group.add_argument('--contact_sheet', default=None, metavar='FILE.png',
                     help='Write a captioned PNG grid of the sampled images (any fsspec '
                     'URL).')
  return parser


def inspect(args) -> schema_lib.Schema:
  """Samples the inputs and detects their schema (no Beam pipeline)."""
  request = plan.Request.from_options(args)
  config = plan.read_config(request)
  patterns = plan.input_patterns(request)
  input_files.check_reachable(patterns, config.storage_options)
  records, damage, files, skipped = schema_lib.sample_records(patterns, args.limit,
                                                              config)
  spec = plan.image_spec(request)
  decoder = decode.make_decoder(spec)
  try:
    found = plan.detect(request, spec, records, files, config, decoder)
    found.failures = damage + found.failures
    found.skipped_inputs = [url for url, _ in skipped]
    if args.contact_sheet:
      write_contact_sheet(args.contact_sheet, records, found, spec,
                          config.storage_options, decoder=decoder)
  finally:
    decoder.close()
  return found


def export_defaults(found: schema_lib.Schema) -> Optional[dict]:
  """What `unrecord export` with no options would settle for these records (PNG, the
  default name template): plan.settled_choices, as the launch line shows it."""
  if not found.images:
    return None
  value_range, key_value_ranges = normalize.value_ranges(normalize.NormalizeSpec(), found.images)
  config = render.RenderConfig(
      value_range=value_range, key_value_ranges=key_value_ranges,
      name_template=naming.default_template(found), label_key=found.label_key,
      id_key=found.id_key,
      label_names=tuple(found.label_names) if found.label_names else None)
  return plan.settled_choices(found, config)


def caption(image: decode.DecodedImage, found: schema_lib.Schema) -> str:
  parts = []
  if found.id_key and found.id_key in image.features:
    parts.append(str(image.features[found.id_key]))
  else:
    parts.append(f'#{image.ref.index}' + (f'.{image.n}' if image.batch_size > 1 else ''))
  label = image.features.get(found.label_key) if found.label_key else None
  if label is not None:
    names = found.label_names
    name = naming.label_name(label, names)
    parts.append(str(label) if name is None else name)
  return ' · '.join(parts)


def write_contact_sheet(url: str, records, found: schema_lib.Schema,
                        spec: decode.ImageSpec, storage_options, limit: int = 64,
                        decoder=None) -> int:
  """Renders the first images of `records` to a PNG at `url`; returns how many."""
  if found.image is None:
    raise errors.ConfigError('no image was found in the sampled records, so there is '
                             'nothing to put on a contact sheet')
  spec = dataclasses.replace(spec, key=found.image.key)
  decoder = decoder or decode.image_formats.decode_encoded
  display_range = dataset_display_range(found.image)
  items = []
  for ref, payload in records:
    try:
      images = decode.decode_record(ref, payload, spec, decoder)
    except errors.UnrecordError:
      continue
    for image in images:
      pixels = normalize.to_display(image.pixels, image.axes, display_range)
      items.append((pixels, caption(image, found)))
      if len(items) >= limit:
        break
    if len(items) >= limit:
      break
  sheet = preview.contact_sheet(items)
  fs, path = input_files.filesystem(url, storage_options)
  with fs.open(path, 'wb') as f:
    sheet.save(f, format='PNG')
  return len(items)


def dataset_display_range(image: schema_lib.ImageInfo) -> Optional[tuple]:
  """One value range for every image of a dataset, from the observed extent.

  None for types whose own range is meant (uint8, uint16, int8, bool).
  """
  if image.dtype in ('uint8', 'uint16', 'int8', 'bool'):
    return None
  kind = np.float64 if 'float' in image.dtype else np.int64
  return normalize.detect_range(np.asarray(image.value_range, dtype=kind))


# What each record kind is, in the words of the first line of `inspect`.
RECORD_WORDS = {'example': 'a tf.train.Example',
                'sequence_example': 'a tf.train.SequenceExample',
                'tensor': 'a serialized tensor (tf.io.serialize_tensor)',
                'image': 'an encoded image'}


def render_text(found: schema_lib.Schema, files: int = 0) -> str:
  sampled = found.records_sampled
  lines = [(f'Sampled {sampled} records, each ' if sampled != 1 else 'Sampled 1 record, ')
           + RECORD_WORDS.get(found.record, found.record)
           + (f' (splits: {", ".join(found.splits)})' if found.splits else '')
           + (f'; TFDS dataset {found.tfds_name!r}' if found.tfds_name else '')]
  lines.append('')
  heading = 'context' if found.record == 'sequence_example' else 'feature'
  lines += _feature_table(heading, 'length', found.features)
  if found.feature_lists:
    lines.append('')
    lines += _feature_table('feature list', 'steps', found.feature_lists)
  lines.append('')
  for image in found.images:
    fmt = f' ({image.format})' if image.format else ''
    lines.append(
        f'image:  key={image.key}  encoding={image.encoding}{fmt}  dtype={image.dtype}  '
        f'shape={image.shape}  layout={image.axes}  '
        f'values={image.value_range[0]}..{image.value_range[1]}')
    lines += _signature_lines(image)
  if not found.images:
    lines.append('image:  not found (pass --image_key; see the features above)')
  label = found.label_key or '-'
  if found.label_key and found.label_names:
    shown = ', '.join(found.label_names[:8]) + (', ...' if len(found.label_names) > 8
                                                else '')
    label += f'  ({len(found.label_names)} names: {shown})'
  lines.append(f'label:  {label}')
  lines.append(f'id:     {found.id_key or "-"}')
  for failure in found.failures[:10]:
    lines.append(f'failed: {failure}')
  return '\n'.join(lines)


def _signature_lines(image: schema_lib.ImageInfo) -> list:
  """What the values look like and the export flags that read them right."""
  found = normalize.value_signature(image)
  if found is None or not found.flags:
    return []
  if found.auto:
    return [f'        values look like {found.name} data: export takes them so by itself '
            f'(as {" ".join(found.flags)} would)']
  return [f'        values look like {found.name} data: export with '
          f'{" ".join(found.flags)}']


def _feature_table(heading: str, counted: str, summaries) -> list:
  width = max([len(heading)] + [len(k) for k in summaries])
  lines = [f'{heading:<{width}}  {"kind":<5}  {counted:<9}  samples']
  for name, summary in sorted(summaries.items()):
    length = (str(summary.min_length) if summary.min_length == summary.max_length
              else f'{summary.min_length}-{summary.max_length}')
    lines.append(f'{name:<{width}}  {summary.kind:<5}  {length:<9}  '
                 f'{", ".join(summary.samples)}')
  return lines


def inspect_shards(url: str, args) -> int:
  """`unrecord inspect` on a shard output: its counts and first sample."""
  try:
    storage_options = plan.parse_storage_options(args.storage_options)
    found = shard_contents.describe(url, storage_options)
  except errors.ConfigError as e:
    return options.fail(PROG, str(e))
  except (FileNotFoundError, shard_contents.ShardDamage) as e:
    return options.fail(PROG, f'{url}: {e}')
  except Exception as e:  # pylint: disable=broad-except  # the store: one line, exit 3
    cause = f'{type(e).__name__}: {e}'.strip().splitlines()[0][:300]
    print(f'{PROG}: error: cannot read {url}: {cause}; check that the storage is '
          'reachable and that its credentials (--storage_options, the environment) '
          'allow reading', file=sys.stderr)
    return 3
  if args.json:
    json.dump(found, sys.stdout)
    sys.stdout.write('\n')
  else:
    print(shard_contents.render_text(found))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(
      options.prepare_argv(sys.argv[1:] if argv is None else argv))
  if len(args.input) == 1:
    try:
      storage_options = plan.parse_storage_options(args.storage_options)
    except errors.ConfigError as e:
      return options.fail(PROG, str(e))
    if shard_contents.is_shard_output(args.input[0], storage_options):
      return inspect_shards(args.input[0], args)
  try:
    found = inspect(args)
  except errors.ConfigError as e:
    return options.fail(PROG, str(e))
  except errors.StorageFault as e:  # unreachable input storage: exit 3, as export
    print(f'{PROG}: error: {e.message}', file=sys.stderr)
    return 3
  settled = export_defaults(found)
  warning = plan.skipped_warning([(url, '') for url in found.skipped_inputs])
  if warning:
    print(f'{PROG}: {warning}', file=sys.stderr)
  if args.json:
    json.dump(dict(found.to_json(), settled=settled,
                   skipped_inputs=found.skipped_inputs), sys.stdout)
    sys.stdout.write('\n')
  else:
    print(render_text(found))
    if settled:
      print('export with no options would write: ' + '; '.join(
          render.describe_image(image) for image in settled['images']) +
            f'; png as {settled["name_template"]!r}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
