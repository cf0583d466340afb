"""Planning an export, Beam-free: what the user asked for plus a sample of the records
become the job's ExportConfig.

`Request` holds the export's options as values (the command line's flags, by the same
names and with the same defaults: it owns them). `plan_export` samples the first records,
settles the schema (keys, value range, names) so that mistakes fail before any worker
starts, checks the output root, and returns a `Plan`, whose `config` is what
`ptransforms.ExportImages` runs. `beam_jobs/export_images.py` only parses, launches and
reports.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import time
from typing import Dict, List, Optional, Sequence, Tuple

import fsspec

from transforms import errors
from transforms.images import decode
from transforms.images import name_templates
from transforms.images import render
from transforms.images import schema as schema_lib
from transforms.inputs import input_files
from transforms.inputs import record_ranges
from transforms.inputs import shard_names
from transforms.inputs import tfrecord
from transforms.output import export_config
from transforms.output import incremental
from transforms.output import naming
from transforms.output import root_claim
from transforms.output import root_files
from transforms.output import shards as shards_lib
from transforms.pixels import encode
from transforms.pixels import normalize


# Each stage's config owns the defaults of its options; Request takes them from there.
_READ, _IMAGE = record_ranges.ReadConfig(), decode.ImageSpec()
_ENCODE, _NORMALIZE = encode.EncodeSpec(), normalize.NormalizeSpec()


@dataclasses.dataclass(frozen=True)
class Request:
  """An export as asked for: each field is the `unrecord export` option of that name,
  with its default. Text values are as typed (`shape='224,224,3'`, `mean='imagenet'`)."""
  # Input: where the records are and how to find the image in them.
  input: Optional[Tuple[str, ...]] = None
  compression: str = _READ.compression
  max_record_size: int = _READ.max_record_size
  storage_options: Optional[str] = None  # JSON text
  image_key: Optional[Tuple[str, ...]] = None
  label_key: Optional[str] = None
  id_key: Optional[str] = None
  label_names: Optional[str] = None  # a file, one name per line
  shape: Optional[str] = None
  dtype: Optional[str] = None
  tensor_layout: str = _IMAGE.axes
  decoder_isolation: str = 'on'  # the command isolates decoders; ImageSpec alone does not
  max_pixels: int = _IMAGE.max_pixels
  # Output.
  output: Optional[str] = None
  format: str = _ENCODE.format
  quality: int = _ENCODE.quality
  png_compression: Optional[int] = _ENCODE.png_compression
  png_encoder: str = _ENCODE.png_encoder
  webp_lossless: bool = _ENCODE.webp_lossless
  jpeg_progressive: bool = _ENCODE.jpeg_progressive
  jpeg_subsampling: str = _ENCODE.jpeg_subsampling
  reencode: bool = False
  name_template: Optional[str] = None
  layout: str = 'flat'
  portable_names: bool = False
  skip_existing: bool = False
  incremental: bool = False
  overwrite: bool = False
  max_failures: int = 0
  manifest_format: str = 'jsonl'
  manifest_part_rows: int = export_config.MANIFEST_PART_ROWS
  checksum: str = 'sha256'
  # Shards (transforms/shards.py): --pack tar|parquet, bounded by bytes and/or samples.
  pack: str = 'files'
  shard_size: Optional[str] = None  # '1GB', '500MB', bytes
  shard_samples: Optional[int] = None
  sample_records: int = 64
  split_size_mb: int = _READ.split_bytes >> 20
  # Normalization.
  value_range: str = _NORMALIZE.value_range
  mean: Optional[str] = None  # '0.5' or a preset; NormalizeSpec holds the numbers
  std: Optional[str] = None
  channel_order: str = _NORMALIZE.channel_order
  bit_depth: str = _NORMALIZE.bit_depth
  non_finite: str = _NORMALIZE.non_finite

  @classmethod
  def from_options(cls, options) -> 'Request':
    """The request an argparse namespace (or Beam options view) holds; options it lacks
    keep their defaults, and lists become tuples."""
    values = {}
    for field in dataclasses.fields(cls):
      value = getattr(options, field.name, DEFAULT_VALUES[field.name])
      values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)

  def given(self) -> Dict[str, object]:
    """The options set away from their defaults, as JSON values."""
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in dataclasses.asdict(self).items()
            if value != DEFAULT_VALUES[name]}


DEFAULT_VALUES = {field.name: field.default for field in dataclasses.fields(Request)}
# The options a report lists, and of those, the ones that decide which files an export
# writes and their bytes: two runs that differ in one of these (or in --input) are
# different exports (transforms/output/root_claim.py).
REPORTED_OPTIONS = (
    'input', 'output', 'compression', 'image_key', 'label_key', 'id_key', 'label_names',
    'shape', 'dtype', 'tensor_layout', 'max_pixels', 'decoder_isolation', 'format',
    'quality', 'png_compression', 'png_encoder', 'webp_lossless', 'jpeg_progressive',
    'jpeg_subsampling', 'reencode', 'name_template', 'layout', 'skip_existing',
    'incremental', 'max_failures', 'value_range', 'mean', 'std', 'channel_order',
    'bit_depth', 'non_finite', 'overwrite', 'manifest_format', 'manifest_part_rows',
    'portable_names', 'checksum', 'pack', 'shard_size', 'shard_samples')
IDENTITY_OPTIONS = (
    'compression', 'image_key', 'label_key', 'id_key', 'label_names', 'shape', 'dtype',
    'tensor_layout', 'max_pixels', 'format', 'quality', 'png_compression', 'png_encoder',
    'webp_lossless', 'jpeg_progressive', 'jpeg_subsampling', 'reencode', 'name_template',
    'layout', 'value_range', 'mean', 'std', 'channel_order', 'bit_depth', 'non_finite',
    'portable_names', 'pack', 'shard_size', 'shard_samples')
# With --pack, what also decides the shards: the record ranges are cut at about
# --split_size_mb (or the shard bound, if larger), and each range writes its own.
PACKED_OPTIONS = ('split_size_mb',)
# Options that only one format (or two) reads; given with another, they would do nothing.
FORMAT_OPTIONS = {
    'png_compression': ('png',), 'png_encoder': ('png',), 'quality': ('jpeg', 'webp'),
    'jpeg_progressive': ('jpeg',), 'jpeg_subsampling': ('jpeg',), 'webp_lossless': ('webp',),
}


# -- the input options, as configs (the export and `unrecord inspect`) -----------------

def parse_storage_options(text: Optional[str]) -> Optional[input_files.StorageOptions]:
  if not text:
    return None
  try:
    value = json.loads(text)
  except ValueError as e:
    raise errors.ConfigError(f'--storage_options is not valid JSON ({e})') from None
  known = set(fsspec.available_protocols())
  if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
    raise errors.ConfigError(
        '--storage_options must map a protocol to its settings, e.g. '
        '{"s3": {"endpoint_url": "http://127.0.0.1:9000"}}')
  unknown = sorted(k for k in value if k not in known)
  if unknown:
    raise errors.ConfigError(f'--storage_options names unknown protocols: '
                             f'{", ".join(unknown)}')
  return value


def parse_shape(text: Optional[str]):
  if not text:
    return None
  try:
    return tuple(int(v) for v in text.replace('x', ',').split(','))
  except ValueError:
    raise errors.ConfigError(f'--shape must be like 224,224,3, got {text!r}') from None


def read_config(request: Request) -> record_ranges.ReadConfig:
  return record_ranges.ReadConfig(
      compression=request.compression, max_record_size=request.max_record_size,
      split_bytes=max(request.split_size_mb, 1) << 20,
      storage_options=parse_storage_options(request.storage_options))


def image_keys(request: Request) -> List[str]:
  """The --image_key values in order, each once; [] to detect the image."""
  keys = []
  for value in request.image_key or ():
    for key in value.split(','):
      key = key.strip()
      if key and key not in keys:
        keys.append(key)
  return keys


def image_spec(request: Request) -> decode.ImageSpec:
  """The spec of the first image key (or of a detected one)."""
  return decode.ImageSpec(
      key=(image_keys(request) or [None])[0], shape=parse_shape(request.shape),
      dtype=request.dtype, axes=request.tensor_layout, max_pixels=request.max_pixels,
      isolate_decoder=request.decoder_isolation == 'on')


def input_patterns(request: Request) -> List[str]:
  return input_files.split_patterns(request.input or [])


def load_label_names(path: Optional[str],
                     storage_options: Optional[input_files.StorageOptions] = None
                     ) -> Optional[List[str]]:
  if not path:
    return None
  fs, fs_path = input_files.filesystem(path, storage_options)
  try:
    with fs.open(fs_path, 'rb') as f:
      text = f.read().decode('utf-8')
  except (OSError, UnicodeDecodeError) as e:
    raise errors.ConfigError(f'--label_names {path!r} cannot be read ({e})') from None
  names = [line.strip() for line in text.splitlines()]
  while names and not names[-1]:
    names.pop()
  if not names:
    raise errors.ConfigError(f'--label_names {path!r} is empty')
  return names


def mean_std(request: Request
             ) -> Tuple[Optional[Tuple[float, ...]], Optional[Tuple[float, ...]]]:
  """--mean/--std as numbers: a preset name sets both, or each is a list of numbers."""
  mean_text = request.mean.strip().lower() if request.mean else request.mean
  std_text = request.std.strip().lower() if request.std else request.std
  mean = std = None
  if mean_text and mean_text in normalize.PRESETS:
    mean, std = normalize.preset(mean_text)
  elif mean_text:
    mean = normalize.parse_mean_std(mean_text)
  if std_text and std_text in normalize.PRESETS:
    std = normalize.preset(std_text)[1]
  elif std_text:
    std = normalize.parse_mean_std(std_text)
  return mean, std


# -- the plan ---------------------------------------------------------------------------

@dataclasses.dataclass
class Plan:
  """What the launch settled, for the opening line and the report."""
  files: int
  found: schema_lib.Schema
  config: export_config.ExportConfig
  identity: dict
  mean_frame_bytes: float = 0.0
  # Files of a folder input that hold no TFRecord, as (url, why): not read.
  skipped: List[Tuple[str, str]] = dataclasses.field(default_factory=list)


def plan_export(request: Request, started: Optional[float] = None) -> Plan:
  """Resolves `request` and the data's schema into an ExportConfig; raises ConfigError.

  Reads the first records of the inputs and the output root's state; writes nothing.
  `started`: when the run began (the report's clock), by default now.
  """
  started = time.time() if started is None else started
  if not request.input:
    raise errors.ConfigError('no input given; pass --input PATTERN')
  if not request.output:
    raise errors.ConfigError('no output given; pass --output URL')
  read_settings = read_config(request)
  shard_spec = shard_spec_of(request)
  if shard_spec.packed:  # a range writes its own shards: let each fill about one
    read_settings = dataclasses.replace(read_settings, split_bytes=shards_lib.range_bytes(
        shard_spec, read_settings.split_bytes))
  patterns = tuple(input_patterns(request))
  input_files.check_reachable(patterns, read_settings.storage_options)
  spec = image_spec(request)
  listed = record_ranges.list_inputs(patterns, read_settings)
  check_output_outside_inputs(patterns, request.output, read_settings.storage_options,
                              request.overwrite, files=[item.url for item in listed[0]] +
                              [url for url, _ in listed[1]])
  records, damage, files, skipped = schema_lib.sample_records(
      patterns, request.sample_records, read_settings, listed=listed)
  if not records:
    raise errors.ConfigError(
        f'no intact record could be read from {len(files)} input file(s)' +
        (f'; first problem: {damage[0]}' if damage else ''))
  decoder = decode.make_decoder(spec)
  try:
    found = detect(request, spec, records, files, read_settings, decoder)
  finally:
    decoder.close()
  if found.image is None:
    first = found.failures[0] if found.failures else 'no image feature was found'
    # Only a record with no image to be found calls for --image_key; other reasons
    # (a wrong --shape, say) carry their own hint.
    hint = '; pass --image_key' if (
        f'[{errors.MISSING_FEATURE}]' in first or not found.failures) else ''
    raise errors.ConfigError(first + hint)

  mean, std = mean_std(request)
  normalize_spec = normalize.NormalizeSpec(
      value_range=request.value_range, mean=mean, std=std,
      channel_order=request.channel_order, bit_depth=request.bit_depth,
      non_finite=request.non_finite)
  encode_spec = encode.EncodeSpec(
      format=request.format, quality=request.quality,
      png_compression=request.png_compression, png_encoder=request.png_encoder,
      webp_lossless=request.webp_lossless, jpeg_progressive=request.jpeg_progressive,
      jpeg_subsampling=request.jpeg_subsampling)
  given = request.given()
  check_format_options(request.format, given)
  for image in found.images:  # validates --bit_depth vs --format
    normalize.target_bits(image.dtype, request.bit_depth, encode_spec.holds_16bit,
                          encode_spec.holds_float)
  template = _template(request, found, files)
  if shard_spec.packed and len(found.images) > 1:
    raise errors.ConfigError(
        f'--pack {shard_spec.pack} packs one image per sample, but {len(found.images)} '
        f'image keys are written ({", ".join(i.key for i in found.images)}); pass one '
        '--image_key, or drop --pack')

  image_specs = [dataclasses.replace(
      spec, key=image.key, encoding=image.encoding, record=found.record,
      decode_encoded=image.encoding != 'encoded' or image.format != request.format or
      request.reencode) for image in found.images]
  value_range, key_value_ranges = normalize.value_ranges(normalize_spec, found.images)
  render_config = render.RenderConfig(
      encode=encode_spec, normalize=normalize_spec, value_range=value_range,
      key_value_ranges=key_value_ranges,
      name_template=template, id_key=found.id_key, label_key=found.label_key,
      label_names=tuple(found.label_names) if found.label_names else None,
      reencode=request.reencode, max_pixels=request.max_pixels,
      portable_names=request.portable_names)
  root = root_files.OutputRoot(request.output, read_settings.storage_options)
  root.check_writable()
  used, settings = export_options(given, shard_spec.packed)
  identity = root_claim.identity(patterns, settings)
  root_claim.check_compatible(root, identity, claim_mode(request))
  processed = ()
  if request.incremental:
    processed = tuple(incremental.changed_shards(
        listed[0], incremental.read_state(root), identity['settings'],
        read_settings.storage_options))
    patterns = tuple(url for url, _ in processed)
  choices = settled_choices(found, render_config, request.layout)
  config = export_config.ExportConfig(
      choices=json.dumps(choices), patterns=patterns, output=request.output,
      read=read_settings, image=image_specs[0], more_images=tuple(image_specs[1:]),
      render=render_config, skip_existing=request.skip_existing,
      max_failures=request.max_failures, run_started=started, options_used=used,
      incremental=request.incremental, processed=processed,
      packed_sources=tuple(item.url for item in listed[0])
      if shard_spec.packed and not request.incremental else (),
      settings=tuple(sorted(identity['settings'].items())), overwrite=request.overwrite,
      manifest_format=request.manifest_format,
      manifest_part_rows=request.manifest_part_rows, checksum=request.checksum,
      skipped_inputs=tuple(url for url, _ in skipped), shards=shard_spec)
  mean_frame = sum(len(payload) + 16 for _, payload in records) / len(records)
  return Plan(files=len(files), found=found, config=config, identity=identity,
              mean_frame_bytes=mean_frame, skipped=skipped)


def shard_spec_of(request: Request) -> shards_lib.ShardSpec:
  """--pack, --shard_size and --shard_samples as a ShardSpec (ConfigError if wrong)."""
  return shards_lib.ShardSpec(pack=request.pack,
                              max_bytes=shards_lib.parse_size(request.shard_size),
                              max_samples=request.shard_samples)


def export_options(given: Dict[str, object], packed: bool
                   ) -> Tuple[Tuple[Tuple[str, object], ...], Dict[str, object]]:
  """(the options the report lists, the settings that make the export's identity), of
  the options `given` away from their defaults; with --pack, PACKED_OPTIONS too."""
  reported = REPORTED_OPTIONS + (PACKED_OPTIONS if packed else ())
  identity_options = IDENTITY_OPTIONS + (PACKED_OPTIONS if packed else ())
  used = tuple(sorted((k, v) for k, v in given.items() if k in reported))
  return used, {k: v for k, v in used if k in identity_options}


def skipped_warning(skipped: Sequence[Tuple[str, str]], shown: int = 10) -> Optional[str]:
  """The one line naming the files of a folder input that hold no TFRecord (None when
  there are none but TFDS's own metadata beside its shards, which is expected there)."""
  urls = [url for url, _ in skipped if not schema_lib.is_tfds_metadata(url)]
  if not urls:
    return None
  folder = posixpath.dirname(urls[0]) if len(urls) == 1 else posixpath.dirname(
      posixpath.commonprefix(urls) + 'x')
  names = ', '.join(url[len(folder):].lstrip('/') if folder else url
                    for url in urls[:shown])
  more = f' and {len(urls) - shown} more' if len(urls) > shown else ''
  return (f'warning: skipped {len(urls)} file(s) in {folder or "the input folders"} that '
          f'are not TFRecord files: {names}{more}')


def detect(request: Request, spec: decode.ImageSpec, records: Sequence[tfrecord.Record],
           files: Sequence[str], read_settings: record_ranges.ReadConfig,
           decoder: decode.Decoder) -> schema_lib.Schema:
  """The schema the sampled records show, with the keys and label names `request`
  names (`found.image` is None when no image was found; `found.failures` says why)."""
  return schema_lib.detect_schema(
      records, image_key=spec.key, more_image_keys=image_keys(request)[1:],
      label_key=request.label_key, id_key=request.id_key,
      label_names=load_label_names(request.label_names, read_settings.storage_options),
      spec=spec, tfds=schema_lib.find_tfds_info(files, read_settings.storage_options),
      files=files, decoder=decoder)


def _template(request: Request, found: schema_lib.Schema, files: Sequence[str]) -> str:
  """The name template: --name_template, else the layout's default; checked against
  the fields the records have."""
  with_splits = bool(files) and all(shard_names.split_of(f) for f in files)
  if request.layout == 'class' and not request.name_template and found.label_key is None:
    raise errors.ConfigError(
        '--layout class makes a folder per class, but no label feature was found in '
        f'the records (they have: {", ".join(sorted(found.features)) or "no features"}); '
        'pass --label_key FEATURE')
  # Train and test images must not share class folders (ImageFolder would mix them).
  template = request.name_template or naming.default_template(found, request.layout,
                                                              with_splits)
  available = set(name_templates.BUILTIN_FIELDS) | set(found.scalar_keys)
  if found.id_key is None:
    available.discard('id')
  if found.label_key is None:
    available -= {'label', 'label_name'}
  if any(shard_names.split_of(f) is None for f in files):
    available.discard('split')
  name_templates.check_template(template, sorted(available))
  if found.batched and 'n' not in name_templates.template_fields(template):
    raise errors.ConfigError(
        f'the records hold batches of images ({found.image.axes}); add {{n}} to '
        '--name_template so each image of a batch gets its own name')
  if len(found.images) > 1 and 'key' not in name_templates.template_fields(template):
    raise errors.ConfigError(
        f'{len(found.images)} image keys are written '
        f'({", ".join(i.key for i in found.images)}); '
        'add {key} to --name_template so their images get different names')
  return template


def settled_choices(found: schema_lib.Schema, config: render.RenderConfig,
                    folders: str = 'flat') -> dict:
  """What the launch settled for the data, in the words a user checks before looking at
  any image: the launch line, `_report.json`/`.html` and `inspect` show it."""
  spec = config.normalize
  images = []
  for image in found.images:
    value_range = config.value_range_for(image.key)
    if spec.value_range == 'minmax':
      shown, source = None, 'each image\'s own min..max (--value_range minmax)'
    elif value_range is not None:
      shown = [normalize.plain_number(v) for v in value_range]
      source = ('--value_range' if spec.value_range != 'auto' else
                'the sample, after --mean/--std' if spec.mean is not None else 'the sample')
    else:
      shown, source = list(normalize.type_range(image.dtype) or ()), f'dtype {image.dtype}'
    images.append({
        'key': image.key, 'encoding': image.encoding, 'format': image.format,
        'dtype': image.dtype, 'shape': image.shape, 'layout': image.axes,
        'value_range': shown, 'value_range_from': source,
        'bit_depth': normalize.target_bits(
            image.dtype, spec.bit_depth, config.encode.holds_16bit,
            config.encode.holds_float, value_range),
        'passthrough': render.passes_through(image.format, image.dtype, config),
    })
    suggested = normalize.suggestion(spec, image)
    if suggested is not None:  # only then: other data's settled block stays as it was
      images[-1]['suggested'] = suggested
  return {'record': found.record, 'images': images, 'format': config.encode.format,
          'layout': folders, 'name_template': config.name_template,
          'label_key': config.label_key, 'id_key': config.id_key,
          'label_names': len(config.label_names) if config.label_names else None}


def check_format_options(output_format: str, given: Dict[str, object]) -> None:
  """`given`: the options set away from their defaults."""
  unused = [name for name, formats in FORMAT_OPTIONS.items()
            if name in given and output_format not in formats]
  if unused:
    names = ', '.join(f'--{name} (for {"/".join(FORMAT_OPTIONS[name])})'
                      for name in unused)
    raise errors.ConfigError(
        f'{names} do{"es" if len(unused) == 1 else ""} nothing with --format '
        f'{output_format}; drop {"it" if len(unused) == 1 else "them"} or change --format')


def claim_mode(request: Request) -> str:
  """How this run may combine with what the root holds (ExportConfig refuses the
  combinations that contradict each other)."""
  if request.overwrite:
    return 'overwrite'
  return 'incremental' if request.incremental else (
      'skip_existing' if request.skip_existing else 'plain')


def check_output_outside_inputs(patterns: Sequence[str], output: str,
                                storage_options=None, overwrite: bool = False,
                                files: Optional[Sequence[str]] = None) -> None:
  """Refuses inputs that would read the output root's own files: an input file under it
  (`files`, the expanded inputs, when known), an output root inside a folder input, or
  under a '**' pattern's folder. Such an export reads its images (and manifest, dead
  letter) back as records on the next run, and --overwrite would remove the inputs.

  Without `files` it lists nothing, so the launcher asks before it makes the root."""
  try:
    root = input_files.location(output, storage_options)
  except (ValueError, ImportError, OSError, errors.StorageFault):
    return  # an unknown protocol, a missing client: the output's own check says so
  culprit = shown = None
  for pattern in patterns:
    try:
      glob = input_files.has_glob(pattern)
      folder = input_files.location(input_files.literal_prefix(pattern) if glob else
                                    pattern, storage_options)
    except (ValueError, ImportError, OSError, errors.StorageFault):
      continue  # expanding the pattern says what is wrong with it
    if glob:
      # '**' reaches any depth: every file the export writes under the root matches.
      reaches = '**' in pattern and input_files.is_within(root, folder)
      why = 'it matches the files the export writes there'
    else:
      # A folder input reads every file under it, but in folders named '.*' or '_*'.
      reaches = (root != folder and input_files.is_within(root, folder) and
                 not input_files.in_hidden_folder(folder[1], root[1]))
      why = 'the output root is inside that input folder'
    if reaches:
      culprit, shown = pattern, why
      break
  folders: Dict[str, Tuple[str, str]] = {}  # resolved once per folder, not per file

  def place(url: str) -> Tuple[str, str]:
    folder, name = url.rsplit('/', 1) if '/' in url else ('.', url)
    if folder not in folders:
      folders[folder] = input_files.location(folder or '/', storage_options)
    protocol, path = folders[folder]
    return protocol, path.rstrip('/') + '/' + name

  inside = [f for f in files or () if input_files.is_within(place(f), root)]
  if culprit is None and inside:
    first = input_files.location(inside[0], storage_options)
    culprit = next((p for p in patterns if input_files.is_within(first, input_files.location(
        input_files.literal_prefix(p), storage_options))), ','.join(patterns))
    # This run's own lock is there already: on a first run it may be all there is.
    theirs = [f for f in inside if posixpath.basename(f) != root_claim.LOCK]
    shown = (f'{len(theirs)} file(s) under it, e.g. {theirs[0]}' if theirs else
             'it matches the files the export writes there')
  if culprit is None:
    return
  action = ('--overwrite would remove the inputs' if overwrite else
            'the export would read its own output back as records')
  raise errors.ConfigError(
      f'--input {culprit!r} reads files under --output {output!r} ({shown}): {action}; '
      'choose an --output outside the inputs, or input patterns that leave it out')


def check_output_is_a_folder(output: str) -> None:
  """A local --output that is a file, or lies under one, cannot be the output root: one
  line saying so (not 'File exists'). Object stores have no such files; not asked there."""
  try:
    fs, path = input_files.filesystem(output)
  except (ValueError, ImportError, OSError, errors.StorageFault):
    return  # an unknown protocol, a missing client: the output's own check says so
  if not input_files.is_local(fs):
    return
  place = os.path.abspath(path)
  while True:
    if os.path.exists(place) and not os.path.isdir(place):
      where = ('is a file' if place == os.path.abspath(path) else
               f'lies under {place!r}, which is a file')
      raise errors.ConfigError(
          f'--output {output!r} {where}, not a folder: the output root is a folder of '
          'images; name a folder (a new one is made)')
    parent = os.path.dirname(place)
    if parent == place:
      return
    place = parent


def count_images(plan: Plan) -> Tuple[int, bool]:
  """(images in the input, whether estimated) for the progress total.

  Local uncompressed files are counted exactly from their frame headers; others are
  estimated from their size and the sampled records' mean frame size.
  """
  config = plan.config
  counts = [plan.found.images_per_record(image) for image in plan.found.images]
  fewest, per_record = sum(low for low, _ in counts), sum(high for _, high in counts)
  estimated = fewest != per_record
  records = 0.0
  skipped = {url for url, _ in plan.skipped}
  for item in input_files.expand_patterns(config.patterns, config.read.storage_options):
    if item.url in skipped:
      continue
    exact = record_ranges.count_records(item, config.read)
    if exact is None:
      estimated = True
      exact = item.size / max(plan.mean_frame_bytes, 1.0)
    records += exact
  return int(round(records * per_record)), estimated
