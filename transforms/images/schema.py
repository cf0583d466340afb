"""What a set of TFRecords holds: features, the image, label and id, TFDS metadata.

`detect_schema` looks at a sample of records and decides what `inspect` reports and what
the export job uses when the user leaves keys unset. An explicit key always wins.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
from typing import Dict, List, Optional, Sequence, Tuple


from transforms import errors
from transforms.images import decode
from transforms.inputs import input_files
from transforms.inputs import record_ranges
from transforms.inputs import shard_names
from transforms.inputs import tfrecord
from transforms.pixels import normalize
from transforms.records import example as example_lib
from transforms.records import record_kinds

_LABEL_NAMES = ('label', 'image/class/label', 'labels', 'class', 'class_id', 'label_id',
                'target', 'category', 'category_id', 'y')
_LABEL_PATTERN = re.compile(r'(label|class|target|category)', re.I)
_ID_NAMES = ('id', 'image/id', 'key', 'image/key', 'image/source_id', 'example_id',
             'image_id', 'uid', 'image/filename', 'filename', 'file_name', 'name')
_ID_PATTERN = re.compile(r'(^|[/_])(id|key|filename|file_name|uuid)$', re.I)


# ---------------------------------------------------------------------------------------
# TFDS metadata


@dataclasses.dataclass(frozen=True)
class TfdsInfo:
  """What a TFDS-prepared folder says: dataset name, image and ClassLabel features."""
  name: Optional[str]
  image_keys: Tuple[str, ...]
  class_labels: Dict[str, Optional[Tuple[str, ...]]]


def find_tfds_info(shard_urls: Sequence[str],
                   storage_options: Optional[input_files.StorageOptions] = None,
                   max_folders: int = 16) -> Optional[TfdsInfo]:
  """TFDS metadata from the first of the shards' folders that has any."""
  folders = []
  for url in shard_urls:
    folder = posixpath.dirname(url)
    if folder not in folders:
      folders.append(folder)
      info = read_tfds_info(url, storage_options)
      if info is not None:
        return info
      if len(folders) >= max_folders:
        break
  return None


TFDS_METADATA = ('dataset_info.json', 'features.json')


def is_tfds_metadata(url: str) -> bool:
  """Whether `url` names one of the files TFDS writes beside its shards (read_tfds_info
  reads them): a folder input skips them without a word, as they are expected there."""
  name = posixpath.basename(url)
  return name in TFDS_METADATA or name.endswith('.labels.txt')


def read_tfds_info(shard_url: str,
                   storage_options: Optional[input_files.StorageOptions] = None
                   ) -> Optional[TfdsInfo]:
  """Reads dataset_info.json / features.json / *.labels.txt beside a shard, if present."""
  fs, path = input_files.filesystem(shard_url, storage_options)
  folder = posixpath.dirname(path)

  def read_text(name: str) -> Optional[str]:
    try:
      with fs.open(posixpath.join(folder, name), 'rb') as f:
        return f.read(4 << 20).decode('utf-8')
    except (OSError, UnicodeDecodeError):
      return None

  features_text = read_text('features.json')
  info_text = read_text('dataset_info.json')
  try:
    label_files = [posixpath.basename(p) for p in fs.glob(posixpath.join(folder,
                                                                       '*.labels.txt'))]
  except OSError:
    label_files = []
  if features_text is None and info_text is None and not label_files:
    return None
  name = None
  if info_text:
    try:
      name = json.loads(info_text).get('name')
    except (ValueError, AttributeError):
      name = None
  image_keys: List[str] = []
  label_keys: List[str] = []
  if features_text:
    try:
      _walk_tfds_features(json.loads(features_text), '', image_keys, label_keys)
    except (ValueError, AttributeError, TypeError):
      pass
  # Without features.json, a `<feature>.labels.txt` beside the shards names its classes.
  label_keys += [name[:-len('.labels.txt')] for name in sorted(label_files)
                 if name[:-len('.labels.txt')] not in label_keys]
  class_labels = {}
  for key in label_keys:
    text = (read_text(f'{key.replace("/", "-")}.labels.txt') or
            read_text(f'{key.split("/")[-1]}.labels.txt'))
    class_labels[key] = tuple(line.strip() for line in text.splitlines()
                              if line.strip()) if text else None
  return TfdsInfo(name, tuple(image_keys), class_labels)


def _walk_tfds_features(node: dict, prefix: str, image_keys: List[str],
                        label_keys: List[str]) -> None:
  features = node.get('featuresDict', {}).get('features', {})
  for key, feature in features.items():
    full = f'{prefix}{key}'
    class_name = feature.get('pythonClassName', '')
    if class_name.endswith('.Image'):
      image_keys.append(full)
    elif class_name.endswith('.ClassLabel'):
      label_keys.append(full)
    elif 'featuresDict' in feature:
      _walk_tfds_features(feature, f'{full}/', image_keys, label_keys)


# ---------------------------------------------------------------------------------------
# Detection


@dataclasses.dataclass
class FeatureSummary:
  kind: str
  min_length: int
  max_length: int
  samples: List[str]
  # The lengths of the values themselves, for a feature list (min_length/max_length count
  # its steps); a feature's are its own lengths.
  value_min_length: int = 1 << 62
  value_max_length: int = 0

  def to_json(self) -> dict:
    return {'kind': self.kind, 'min_length': self.min_length,
            'max_length': self.max_length, 'samples': self.samples}


@dataclasses.dataclass
class ImageInfo:
  key: str
  encoding: str
  dtype: str
  shape: List[int]
  axes: str  # axis order; 'layout' in JSON
  value_range: List[float]
  format: Optional[str] = None
  # Per channel (HWC order) [min, max] over the sample, when every sampled image has the
  # same channels: --mean/--std undo each channel with its own numbers (render).
  channel_ranges: Optional[List[List[float]]] = None

  def to_json(self) -> dict:
    info = {'key': self.key, 'encoding': self.encoding, 'dtype': self.dtype,
            'shape': self.shape, 'layout': self.axes, 'value_range': self.value_range}
    if self.format is not None:
      info['format'] = self.format
    return info


@dataclasses.dataclass
class Schema:
  """What a sample of records holds. `features` are an Example's features or a
  SequenceExample's context; `feature_lists` summarise a SequenceExample's lists, their
  lengths counted in steps and their samples taken from the first step."""
  records_sampled: int
  features: Dict[str, FeatureSummary]
  image: Optional[ImageInfo]
  label_key: Optional[str]
  id_key: Optional[str]
  label_names: Optional[List[str]]
  splits: List[str] = dataclasses.field(default_factory=list)
  tfds_name: Optional[str] = None
  failures: List[str] = dataclasses.field(default_factory=list)
  scalar_keys: List[str] = dataclasses.field(default_factory=list)
  record: str = record_kinds.EXAMPLE
  feature_lists: Dict[str, FeatureSummary] = dataclasses.field(default_factory=dict)
  # The images of further image keys (several --image_key values), in their order.
  more_images: List[ImageInfo] = dataclasses.field(default_factory=list)
  # Files of a folder input that hold no TFRecord: not read (record_ranges.list_inputs).
  skipped_inputs: List[str] = dataclasses.field(default_factory=list)

  @property
  def images(self) -> List[ImageInfo]:
    return ([self.image] if self.image else []) + self.more_images

  @property
  def batched(self) -> bool:
    """True when some record gives several images of one key (a batch, several values,
    a feature list's steps): names then need {n}."""
    return any(self.images_per_record(image)[1] > 1 or image.axes.startswith('n')
               for image in self.images)

  def images_per_record(self, image: Optional[ImageInfo] = None) -> Tuple[int, int]:
    """(fewest, most) images one record gave in the sample, for `image` (default: the
    first image key)."""
    image = image or self.image
    batch = image.shape[0] if image.axes.startswith('n') else 1
    if image.key in self.feature_lists:
      steps = self.feature_lists[image.key]
      return steps.min_length * batch, steps.max_length * batch
    feature = self.features[image.key]
    if image.encoding in ('encoded', 'tensor'):
      return feature.min_length * batch, feature.max_length * batch
    return batch, batch

  def to_json(self) -> dict:
    return {
        'records_sampled': self.records_sampled,
        'record': self.record,
        'features': {k: v.to_json() for k, v in sorted(self.features.items())},
        'feature_lists': {k: v.to_json() for k, v in sorted(self.feature_lists.items())},
        'image': self.image.to_json() if self.image else None,
        'more_images': [image.to_json() for image in self.more_images],
        'label_key': self.label_key,
        'id_key': self.id_key,
        'label_names': self.label_names,
        'splits': self.splits,
        'tfds_name': self.tfds_name,
        'failures': self.failures,
    }


def sample_records(patterns: Sequence[str], limit: int,
                   config: Optional[record_ranges.ReadConfig] = None, listed=None
                   ) -> Tuple[List[tfrecord.Record], List[str], List[str],
                              List[Tuple[str, str]]]:
  """Up to `limit` good records from the start of the inputs, the damage met, the files
  read, and the files skipped (`record_ranges.list_inputs`: in a folder, holding no TFRecord;
  `listed`: what it returned, when the caller has it)."""
  config = config or record_ranges.ReadConfig()
  files, skipped = listed if listed is not None else record_ranges.list_inputs(patterns, config)
  records: List[tfrecord.Record] = []
  damage: List[str] = []
  for item in files:
    for file_range in record_ranges.plan_file(dataclasses.replace(item, in_folder=False), config):
      for slot in record_ranges.read_range(file_range, config):
        if isinstance(slot, errors.CorruptRecordError):
          damage.append(str(slot))
        else:
          records.append(slot)
        if len(records) >= limit:
          return records, damage, [f.url for f in files], skipped
  return records, damage, [f.url for f in files], skipped


def _describe_value(feature: example_lib.FeatureValue) -> str:
  if feature.kind != example_lib.BYTES:
    shown = ', '.join(f'{v:g}' if feature.kind == example_lib.FLOAT else str(v)
                      for v in feature.values[:4])
    return f'[{shown}{", ..." if len(feature) > 4 else ""}]'
  if not len(feature):
    return '[]'
  value = feature.values[0]
  fmt = decode.image_formats.sniff_format(value)
  if fmt:
    return f'<{len(value)} bytes: {fmt}>'
  if len(value) <= 64:
    try:
      return repr(value.decode('utf-8'))
    except UnicodeDecodeError:
      pass
  if decode.npy.looks_like_npy(value):
    try:
      shape, dtype, _, _ = decode.npy.header(value)
      return f'<npy {dtype.newbyteorder("=").name} array {list(shape)}>'
    except errors.UnrecordError:
      return f'<{len(value)} bytes: damaged npy>'
  if decode.tensor_proto.looks_like_tensor(value):
    tensor = decode.tensor_proto.parse_tensor_proto(value)
    return (f'<serialized {decode.tensor_proto.dtype_name(tensor.dtype)} tensor '
            f'{[d.size for d in tensor.tensor_shape.dim]}>')
  return f'<{len(value)} bytes>'


def _pick(features: Dict[str, example_lib.FeatureValue], names: Sequence[str],
          pattern: re.Pattern, kinds: Sequence[str], exclude: Sequence[str]) -> Optional[str]:
  scalar = {k for k, f in features.items() if len(f) == 1 and f.kind in kinds and
            k not in exclude}
  for name in names:
    if name in scalar:
      return name
  matches = sorted(k for k in scalar if pattern.search(k))
  return matches[0] if matches else None


def detect_schema(
    records: Sequence[tfrecord.Record],
    *,
    image_key: Optional[str] = None,
    more_image_keys: Sequence[str] = (),
    label_key: Optional[str] = None,
    id_key: Optional[str] = None,
    label_names: Optional[Sequence[str]] = None,
    spec: decode.ImageSpec = decode.ImageSpec(),
    tfds: Optional[TfdsInfo] = None,
    files: Sequence[str] = (),
    decoder: Optional[decode.Decoder] = None,
) -> Schema:
  """The schema of a sample of records; explicit keys win over detection.

  `more_image_keys`: further image features, each detected like `image_key` (which must
  then be given too).

  `decoder` decodes encoded images (default: in this process).
  """
  parsed: List[Tuple[tfrecord.RecordRef, record_kinds.Parsed]] = []
  failures: List[str] = []
  kind = spec.record or _record_kind(records)
  for ref, payload in records:
    try:
      parsed.append((ref, record_kinds.parse(payload, kind)))
    except errors.UnrecordError as e:
      failures.append(str(e.at(ref.path, ref.index, ref.offset)))

  summaries = _summaries([p.features for _, p in parsed])
  list_summaries = _summaries([p.feature_lists for _, p in parsed], steps=True)

  # The first record that holds an image decides; a broken record first must not.
  steps = [(p, p.first_step()) for _, p in parsed]
  first_parsed, first = next(
      ((p, step) for p, step in steps
       if (image_key in step if image_key else decode.image_candidates(step))),
      steps[0] if steps else (None, {}))
  if image_key is None and tfds and tfds.image_keys:
    image_key = next((k for k in tfds.image_keys if k in first), None)
  if image_key is not None and parsed and image_key not in first:
    if record_kinds.is_bare(kind):
      raise errors.ConfigError(
          f'the records are not tf.train.Example: each is itself {_KIND_WORDS[kind]}, '
          f'so it has no feature {image_key!r}; leave out --image_key')
    raise errors.ConfigError(str(decode.missing_image_error(first, image_key)))

  image = None
  if parsed:
    image, image_key, more_failures = _detect_image(
        parsed, image_key, spec, decoder or decode.image_formats.decode_encoded)
    failures += more_failures
  more_images = []
  for key in more_image_keys:
    if parsed and key not in first:
      raise errors.ConfigError(str(decode.missing_image_error(first, key)))
    info, _, more_failures = _detect_image(parsed, key, spec, decoder or
                                           decode.image_formats.decode_encoded)
    failures += more_failures
    if info is None:
      raise errors.ConfigError(more_failures[0] if more_failures else
                               f'no sampled record has an image in {key!r}')
    more_images.append(info)
  if first_parsed is not None:
    first = first_parsed.features  # labels and ids come from the record, not a step

  exclude = ([image_key] if image_key else []) + list(more_image_keys)
  if label_key is None and tfds:
    label_key = next((k for k in tfds.class_labels if k in first), None)
  if label_key is None:
    label_key = _pick(first, _LABEL_NAMES, _LABEL_PATTERN, (example_lib.INT64,), exclude)
  elif parsed and label_key not in first:
    raise errors.ConfigError(f'label feature {label_key!r} not found; this record has: '
                             f'{decode.describe_features(first)}')
  if id_key is None:
    id_key = _pick(first, _ID_NAMES, _ID_PATTERN, (example_lib.BYTES, example_lib.INT64),
                   exclude + ([label_key] if label_key else []))
  elif parsed and id_key not in first:
    raise errors.ConfigError(f'id feature {id_key!r} not found; this record has: '
                             f'{decode.describe_features(first)}')

  names = list(label_names) if label_names else None
  if names is None and tfds and label_key in tfds.class_labels and \
      tfds.class_labels[label_key]:
    names = list(tfds.class_labels[label_key])

  scalar_keys = sorted(k for k, s in summaries.items() if s.min_length == 1 ==
                       s.max_length and k not in exclude)
  # A list of one value per step is a per-step field: a frame's timestamp or label.
  scalar_keys += sorted(k for k, s in list_summaries.items() if k not in exclude and
                        s.value_min_length == 1 == s.value_max_length)
  return Schema(
      records_sampled=len(records), features=summaries, image=image, label_key=label_key,
      id_key=id_key, label_names=names,
      splits=sorted({s for s in (shard_names.split_of(f) for f in files) if s}),
      tfds_name=tfds.name if tfds else None, failures=failures, scalar_keys=scalar_keys,
      record=kind, feature_lists=list_summaries, more_images=more_images)


_KIND_WORDS = {record_kinds.TENSOR: 'a serialized tensor',
               record_kinds.IMAGE: 'an encoded image'}


def _record_kind(records: Sequence[tfrecord.Record]) -> str:
  """The kind most of the sampled records are; the first record breaks a tie."""
  kinds = [record_kinds.kind_of(payload) for _, payload in records]
  if not kinds:
    return record_kinds.EXAMPLE
  return max(dict.fromkeys(kinds), key=kinds.count)


def _summaries(per_record: Sequence[dict], steps: bool = False) -> Dict[str, FeatureSummary]:
  """A summary of each feature (or, with `steps`, each feature list: lengths in steps,
  samples and value lengths from its steps) over the sampled records."""
  summaries: Dict[str, FeatureSummary] = {}
  for features in per_record:
    for name, value in features.items():
      values = value if steps else [value]
      length = len(value)
      summary = summaries.get(name)
      if summary is None:
        summary = summaries[name] = FeatureSummary(
            values[0].kind if values else example_lib.BYTES, length, length, [])
      summary.min_length = min(summary.min_length, length)
      summary.max_length = max(summary.max_length, length)
      for feature in values:
        summary.value_min_length = min(summary.value_min_length, len(feature))
        summary.value_max_length = max(summary.value_max_length, len(feature))
      if values and len(summary.samples) < 3:
        summary.samples.append(_describe_value(values[0]))
  for name, summary in summaries.items():
    if any(name not in features for features in per_record):
      summary.min_length = 0
  return summaries


def _detect_image(parsed, image_key, spec, decoder):
  failures = []
  if image_key is None:
    candidates = next((c for c in (decode.image_candidates(p.first_step())
                                   for _, p in parsed) if c), None)
    if not candidates:
      failures.append(str(decode.missing_image_error(parsed[0][1].first_step(), None)))
      return None, None, failures
    image_key = candidates[0].key
  spec = dataclasses.replace(spec, key=image_key)
  first_images: Optional[List[decode.DecodedImage]] = None
  ranges, per_channel = [], []
  for ref, record in parsed:
    try:
      images = decode.decode_parsed(ref, record, spec, decoder)
    except errors.UnrecordError as e:
      failures.append(str(e.at(ref.path, ref.index, ref.offset)))
      continue
    if first_images is None and images:
      first_images = images
    ranges += [normalize.value_extent(image.pixels) or (0.0, 0.0) for image in images
               if image.pixels.size]
    per_channel += [_channel_extents(image) for image in images if image.pixels.size]
  if first_images is None:
    return None, image_key, failures
  head = first_images[0]
  low, high = normalize.merge_ranges(ranges) if ranges else (0, 0)
  shape, axes = list(head.stored_shape), head.stored_axes
  info = ImageInfo(
      key=image_key, encoding=head.encoding, dtype=head.source_dtype, shape=shape,
      axes=axes,
      value_range=[normalize.plain_number(low), normalize.plain_number(high)],
      format=head.encoded_format,
      channel_ranges=_merge_channels(per_channel))
  return info, image_key, failures


def _channel_extents(image: decode.DecodedImage) -> Optional[List[Tuple[float, float]]]:
  """Each channel's observed (min, max), ignoring NaN/Inf; None for gray images."""
  try:
    pixels = normalize.to_hwc(image.pixels, image.axes)
  except errors.UnrecordError:
    return None
  if pixels.ndim != 3:
    return None
  return [normalize.value_extent(pixels[:, :, c]) or (0.0, 0.0)
          for c in range(pixels.shape[2])]


def _merge_channels(extents) -> Optional[List[List[float]]]:
  if not extents or any(e is None or len(e) != len(extents[0]) for e in extents):
    return None
  return [[normalize.plain_number(v)
           for v in normalize.merge_ranges([e[c] for e in extents])]
          for c in range(len(extents[0]))]




