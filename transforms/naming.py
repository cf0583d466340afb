"""Output file names from records: templates, safe values, paths that stay under the root.

A template is a Python format string over fields: {id} {index} {n} {stem} {label}
{label_name} {split} {ext} and every one-value feature by name ({image/filename}).
Values that come from data are made safe before they reach a path (see `safe_value`);
the template's own '/' are the only folder separators.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import posixpath
import re
import string
import time
import unicodedata
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

from transforms import errors

if TYPE_CHECKING:  # types only: these modules import naming
  from transforms import decode, render, schema

DEFAULT_TEMPLATE = '{stem}-{index:06d}.{ext}'
BATCH_TEMPLATE = '{stem}-{index:06d}-{n:03d}.{ext}'
CLASS_TEMPLATE = '{label_name}/{stem}-{index:06d}.{ext}'
CLASS_BATCH_TEMPLATE = '{label_name}/{stem}-{index:06d}-{n:03d}.{ext}'
BUILTIN_FIELDS = ('id', 'index', 'n', 'key', 'stem', 'label', 'label_name', 'split', 'ext')
# The fields every image has, whatever its features hold (`name_values`).
_OWN_FIELDS = frozenset({'index', 'n', 'key', 'stem', 'ext'})
# With several image keys, the default templates keep each key's images in its folder.
KEYS_PREFIX = '{key}/'
# With --layout class over records with splits: train/, test/, ... each its own root.
SPLIT_PREFIX = '{split}/'
MAX_VALUE_BYTES = 120
MAX_SEGMENT_BYTES = 240
MAX_PATH_BYTES = 1000
# unrecord's own files at the output root; no image may take these names (nor any name
# starting with `_unrecord`: the lock, the run identity, the incremental state, scratch).
MANIFEST = '_manifest'  # a folder of parts (transforms/manifest.py)
LEGACY_MANIFEST = '_manifest.jsonl'  # the single file earlier versions wrote; still read
DEAD_LETTER_ROWS = '_dead_letter.jsonl'
DEAD_LETTER_RECORDS = '_dead_letter.tfrecord'
REPORT = '_report.json'
REPORT_HTML = '_report.html'
SUCCESS = '_SUCCESS'
LOGS = '_logs'  # a folder of run logs (beam_jobs/logs.py), the newest KEPT_LOGS of them
KEPT_LOGS = 10
RESERVED_NAMES = (MANIFEST, LEGACY_MANIFEST, DEAD_LETTER_ROWS, DEAD_LETTER_RECORDS, SUCCESS, REPORT,
                  REPORT_HTML, LOGS)
# The suffix of the temp files writes go through (transforms/output_root.py); no output name may
# end with it, so the sweep of a killed run's temp files can never take an image.
TEMP_SUFFIX = '.unrecord-tmp'
_UNSAFE_CHARACTERS = {'/', '\\', ':', '*', '?', '"', '<', '>', '|'}


def log_name(started: float, run_id: str) -> str:
  """A run's log under the root: `_logs/unrecord-<UTC start>-<run id>.log`; the names sort
  by start time, so the oldest go first when only the newest are kept."""
  stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))
  return f'{LOGS}/unrecord-{stamp}-{run_id[:8]}.log'


def template_fields(template: str) -> List[str]:
  """The field names a template uses, in order; raises ConfigError when malformed."""
  try:
    parsed = list(string.Formatter().parse(template))
  except ValueError as e:
    raise errors.ConfigError(f'--name_template {template!r} is malformed ({e})') from None
  fields = []
  for _, field, _, _ in parsed:
    if field is None:
      continue
    if field == '' or field.isdigit():
      raise errors.ConfigError(
          f'--name_template {template!r} has a positional field; name every field, '
          'e.g. {index}')
    fields.append(field)
  return fields


def check_template(template: str, available: Sequence[str]) -> None:
  """Raises ConfigError for a malformed template or a field the records do not have."""
  if '\\' in template or template.startswith('/') or '..' in template.split('/'):
    raise errors.ConfigError(
        f'--name_template {template!r} must be a relative path with / separators and '
        'no .. segments')
  missing = [f for f in template_fields(template) if f not in available]
  if missing:
    raise errors.ConfigError(
        f'--name_template uses {", ".join("{" + m + "}" for m in missing)}, which the '
        f'records do not have; available fields: '
        f'{", ".join("{" + a + "}" for a in sorted(available))}')


def _bounded(text: str, limit: int) -> str:
  encoded = text.encode('utf-8')
  if len(encoded) <= limit:
    return text
  digest = hashlib.sha1(encoded).hexdigest()[:10]
  cut = encoded[:limit - 11].decode('utf-8', 'ignore')
  return f'{cut}~{digest}'


@functools.lru_cache(maxsize=4096, typed=True)
def safe_value(value) -> str:
  """A data value made safe for one path segment.

  NFKC-normalized (so full-width look-alikes of / and \\ become real ones, then go),
  path separators, drive colons, wildcards and control characters -> '_', leading dots
  -> '_' (no '.', '..' or hidden files), at most MAX_VALUE_BYTES UTF-8 bytes (longer
  values keep a hash suffix so they stay distinct). Never empty.
  """
  text = unicodedata.normalize('NFKC', str(value))
  text = ''.join('_' if ch in _UNSAFE_CHARACTERS or unicodedata.category(ch)[0] == 'C'
                 else ch for ch in text)
  text = text.strip()
  # Leading dots would make '.', '..' or a hidden file that loaders skip.
  stripped = text.lstrip('.')
  text = '_' * (len(text) - len(stripped)) + stripped
  return _bounded(text or '_', MAX_VALUE_BYTES)


@dataclasses.dataclass(frozen=True)
class NameTemplate:
  template: str

  def fields(self) -> List[str]:
    return template_fields(self.template)

  @functools.cached_property
  def used(self) -> Tuple[str, ...]:
    # '{id[0]}' and '{a.b}' look up 'id' and 'a'.
    return tuple({re.split(r'[.\[]', f, maxsplit=1)[0]: None for f in self.fields()})

  def render(self, values: Mapping[str, object]) -> str:
    """The relative output path for one image; raises NamingError(unsafe_name)."""
    safe = {}
    for k in self.used:
      if k in values:
        v = values[k]
        # Numbers keep their format specs ({index:06d}); bool is text ('True').
        number = type(v) is not str and isinstance(v, (int, float)) and not isinstance(v, bool)
        safe[k] = v if number else safe_value(v)
    try:
      name = self.template.format_map(safe)  # a plain dict: a missing field is KeyError
    except KeyError as e:
      raise errors.NamingError(
          errors.MISSING_FEATURE,
          f'this record has no value for name field {{{e.args[0]}}}') from None
    except (ValueError, TypeError) as e:
      raise errors.NamingError(
          errors.UNSAFE_NAME,
          f'name template {self.template!r} cannot format this record\'s values ({e})'
      ) from None
    return check_relative_path(name)


# Extensions of image files: a name ending in one of these has an extension to replace.
IMAGE_EXTENSIONS = frozenset({'png', 'jpg', 'jpeg', 'jpe', 'webp', 'tif', 'tiff', 'bmp',
                              'gif'})


def ends_in_extension(template: str) -> bool:
  """True for templates whose names always end in the format's extension."""
  return template.endswith('.{ext}')


def with_extension(name: str, ext: str) -> str:
  """`name` ending in `.ext`: an image extension of another format is replaced
  (`x.jpg` -> `x.png`), and a name with none gets one (`cat` -> `cat.png`)."""
  base, dot, suffix = name.rpartition('.')
  if dot and '/' not in suffix and suffix.lower() in IMAGE_EXTENSIONS:
    return name if suffix == ext else f'{base}.{ext}'
  return f'{name}.{ext}'


def check_relative_path(name: str) -> str:
  """`name` if it is a safe relative path under the root, else NamingError(unsafe_name)."""
  problem = None
  if not name or name[0] == '/' or '\\' in name or '\x00' in name:
    problem = 'it is empty, absolute, or holds a backslash or NUL'
  else:
    segments = name.split('/')
    size = len(name.encode('utf-8'))
    if '' in segments or '.' in segments or '..' in segments:
      problem = 'it has an empty, "." or ".." segment'
    elif size > MAX_SEGMENT_BYTES and any(  # no segment is longer than the whole name
        len(s.encode('utf-8')) > MAX_SEGMENT_BYTES for s in segments):
      problem = f'a segment is longer than {MAX_SEGMENT_BYTES} bytes'
    elif size > MAX_PATH_BYTES:
      problem = f'it is longer than {MAX_PATH_BYTES} bytes'
    elif segments[0] in RESERVED_NAMES or segments[0].startswith('_unrecord'):
      problem = f'{segments[0]!r} is one of unrecord\'s own files at the output root'
    elif TEMP_SUFFIX + '/' in name + '/':  # a segment ends with it (it holds no '/')
      problem = f'names ending in {TEMP_SUFFIX!r} are reserved for unrecord\'s temp files'
  if problem:
    raise errors.NamingError(errors.UNSAFE_NAME,
                             f'output name {name[:200]!r} is not safe: {problem}')
  return name


def label_name(label, label_names: Optional[Sequence[str]]) -> Optional[str]:
  """The class name of an integer label, or None when the names do not say."""
  if label_names and isinstance(label, int) and 0 <= label < len(label_names):
    return label_names[label]
  return None


def name_values(
    *,
    index: int,
    n: int,
    key: str = '',
    stem: str,
    ext: str,
    features: Mapping[str, object],
    id_key: Optional[str],
    label_key: Optional[str],
    label_names: Optional[Sequence[str]],
    split: Optional[str],
) -> Dict[str, object]:
  """Every field a template may use for one image (absent ones are left out)."""
  values: Dict[str, object] = dict(features)
  values.update(index=index, n=n, key=key, stem=stem, ext=ext)  # _OWN_FIELDS
  if split is not None:
    values['split'] = split
  if id_key is not None and id_key in features:
    values['id'] = features[id_key]
  if label_key is not None and label_key in features:
    label = features[label_key]
    values['label'] = label
    name = label_name(label, label_names)
    values['label_name'] = str(label) if name is None else name
  return values


# ---------------------------------------------------------------------------------------
# The names of a run


def default_template(found: 'schema.Schema', folders: str = 'flat',
                     with_splits: bool = False) -> str:
  """The name template of a run without --name_template: `{key}/` first with several
  image keys, `{split}/` first for class folders of records with splits, `{n}` for
  batches."""
  return ((KEYS_PREFIX if len(found.images) > 1 else '') +
          (SPLIT_PREFIX if folders == 'class' and with_splits else '') + {
              ('flat', False): DEFAULT_TEMPLATE,
              ('flat', True): BATCH_TEMPLATE,
              ('class', False): CLASS_TEMPLATE,
              ('class', True): CLASS_BATCH_TEMPLATE,
          }[(folders, found.batched)])


class Namer:
  """Output names for many images; what all images of one file share is found once."""

  _FILES_KEPT = 256

  def __init__(self, config: 'render.RenderConfig'):
    self._config = config
    self._template = NameTemplate(config.name_template)
    self._fix_extension = not ends_in_extension(config.name_template)
    self._files = {}  # source path -> (stem, split)
    # A template of only the fields every image has, which no feature can override,
    # names an image without a look at its features (`name_values` gives the same).
    self._own_fields_only = set(self._template.used) <= _OWN_FIELDS

  def name(self, image: 'decode.DecodedImage') -> str:
    """The image's path relative to the output root; raises NamingError."""
    config, path = self._config, image.ref.path
    of_file = self._files.get(path)
    if of_file is None:
      if len(self._files) >= self._FILES_KEPT:
        self._files.clear()
      of_file = self._files[path] = (stem_of(path), split_of(path))
    if self._own_fields_only:
      values = {'index': image.ref.index, 'n': image.n, 'key': image.key,
                'stem': of_file[0], 'ext': config.encode.extension}
    else:
      values = name_values(
          index=image.ref.index, n=image.n, key=image.key, stem=of_file[0],
          ext=config.encode.extension,
          features=image.features, id_key=config.id_key, label_key=config.label_key,
          label_names=config.label_names, split=of_file[1])
    name = self._template.render(values)
    if self._fix_extension:
      name = check_relative_path(
          with_extension(name, config.encode.extension))
    return name


# ---------------------------------------------------------------------------------------
# What an input file's name says: its stem and its split

_TFDS_SHARD = re.compile(
    r'^(?P<dataset>.+?)-(?P<split>[^-]+)\.(tfrecord|array_record|riegeli)'
    r'-\d{5}-of-\d{5}(\.gz|\.zz)?$')
_COMPRESSION_EXT = re.compile(r'\.(gz|gzip|zz|zlib)$', re.I)
_RECORD_EXT = re.compile(
    r'\.(tfrecords?|tfr|records?|array_record|riegeli)([-_.](?P<shard>\d+)(-of-\d+)?)?$',
    re.I)
_SPLIT_WORDS = re.compile(r'^(train|test|validation|valid|val|eval|dev)([-_.]|$)', re.I)


def split_of(url: str) -> Optional[str]:
  """The split a shard belongs to, from TFDS-style or train-/test- prefixed names."""
  name = posixpath.basename(url)
  match = _TFDS_SHARD.match(name)
  if match:
    return match.group('split')
  match = _SPLIT_WORDS.match(name)
  return match.group(1).lower() if match else None


def stem_of(url: str) -> str:
  """A file's name without its record and compression extensions, shard number kept.

  Distinct shards of one dataset get distinct stems, so the default name template
  cannot collide across them:

    'a/b/train.tfrecord.gz'                -> 'train'
    'mnist-train.tfrecord-00001-of-00004'  -> 'mnist-train-00001'
    'train.tfrecord-00001-of-00004'        -> 'train-00001'
    'part-00003.tfrecords'                 -> 'part-00003'
    'images.2024-01-01.rec'                -> 'images.2024-01-01'
  """
  name = _COMPRESSION_EXT.sub('', posixpath.basename(url.rstrip('/')))
  match = _RECORD_EXT.search(name)
  if match is None:
    return posixpath.splitext(name)[0] or name
  base = name[:match.start()] or name
  return f'{base}-{match.group("shard")}' if match.group('shard') else base
