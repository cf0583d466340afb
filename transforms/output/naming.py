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
import re
import time
import unicodedata
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

from transforms import errors
from transforms.images import name_templates
from transforms.inputs import shard_names

# Types only, all from lower packages: root_files and the logs need names, not decoders
# and encoders (numpy, OpenCV, Pillow).
if TYPE_CHECKING:
  from transforms.images import decode
  from transforms.images import render
  from transforms.images import schema

# The fields every image has, whatever its features hold (`name_values`).
_OWN_FIELDS = frozenset({'index', 'n', 'key', 'stem', 'ext'})
MAX_VALUE_BYTES = 120
MAX_SEGMENT_BYTES = 240
MAX_PATH_BYTES = 1000
# unrecord's own files at the output root; no image may take these names (nor any name
# starting with `_unrecord`: the lock, the run identity, the incremental state, scratch).
MANIFEST = '_manifest'  # a folder of parts (transforms/output/manifest.py)
LEGACY_MANIFEST = '_manifest.jsonl'  # the single file earlier versions wrote; still read
DEAD_LETTER_ROWS = '_dead_letter.jsonl'
DEAD_LETTER_RECORDS = '_dead_letter.tfrecord'
REPORT = '_report.json'
REPORT_HTML = '_report.html'
SUCCESS = '_SUCCESS'
# With --pack tar|parquet: the shards' wids-style index (transforms/shards.py).
SHARD_INDEX = 'shardindex.json'
LOGS = '_logs'  # a folder of run logs (beam_jobs/logs.py), the newest KEPT_LOGS of them
KEPT_LOGS = 10
RESERVED_NAMES = (MANIFEST, LEGACY_MANIFEST, DEAD_LETTER_ROWS, DEAD_LETTER_RECORDS, SUCCESS, REPORT,
                  REPORT_HTML, LOGS, SHARD_INDEX)
# The suffix of the temp files writes go through (transforms/output/root_files.py); no
# output name may end with it, so the sweep of a killed run's temp files can never take
# an image.
TEMP_SUFFIX = '.unrecord-tmp'
_UNSAFE_CHARACTERS = {'/', '\\', ':', '*', '?', '"', '<', '>', '|'}


def log_name(started: float, run_id: str) -> str:
  """A run's log under the root: `_logs/unrecord-<UTC start>-<run id>.log`; the names sort
  by start time, so the oldest go first when only the newest are kept."""
  stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))
  return f'{LOGS}/unrecord-{stamp}-{run_id[:8]}.log'


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
    return name_templates.template_fields(self.template)

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
  return ((name_templates.KEYS_PREFIX if len(found.images) > 1 else '') +
          (name_templates.SPLIT_PREFIX if folders == 'class' and with_splits else '') + {
              ('flat', False): name_templates.DEFAULT_TEMPLATE,
              ('flat', True): name_templates.BATCH_TEMPLATE,
              ('class', False): name_templates.CLASS_TEMPLATE,
              ('class', True): name_templates.CLASS_BATCH_TEMPLATE,
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
      of_file = self._files[path] = (shard_names.stem_of(path), shard_names.split_of(path))
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
    if config.portable_names:
      name = portable_name(name)
    return name


# ---------------------------------------------------------------------------------------
# Names that other filesystems refuse or merge: Windows, and case-insensitive disks
# (macOS's APFS and HFS+, Windows' NTFS by default)

# Windows' reserved device names, also with any extension (`aux.png`, `NUL.tar.gz`) and in
# any case; the superscript digits are reserved too (Microsoft's "Naming Files, Paths, and
# Namespaces").
WINDOWS_RESERVED = frozenset(
    {'CON', 'PRN', 'AUX', 'NUL', 'CONIN$', 'CONOUT$'} |
    {f'{port}{digit}' for port in ('COM', 'LPT') for digit in '0123456789\u00b9\u00b2\u00b3'})
_WINDOWS_CHARACTERS = frozenset('<>:"|?*\\')
# A relative name longer than this (in UTF-16 code units, as Windows counts) passes
# Windows' MAX_PATH of 260 once copied under a folder of about 60 characters
# (C:\Users\someone\Downloads\dataset\ is 36): it is counted `long`.
PORTABLE_PATH_CHARS = 200
# A portable name's suffix: '~' and this many hex digits of the SHA-1 of what it replaces.
PORTABLE_HASH_CHARS = 8
# What can make a name non-portable, in the order the report lists them.
PORTABILITY_PROBLEMS = ('reserved', 'trailing', 'character', 'long')


def fold(name: str) -> str:
  """The name a case-insensitive filesystem sees: Unicode's canonical caseless form
  (NFD, casefold), given in NFC. Two names collide there exactly when their folds are
  equal (`Cat.png` and `cat.png`; `é` composed and decomposed, as macOS holds both)."""
  return unicodedata.normalize(
      'NFC', unicodedata.normalize('NFD', name).casefold())


def _utf16_length(text: str) -> int:
  return len(text.encode('utf-16-le')) // 2


_RESERVED_SEGMENT = re.compile(  # the superscripts as characters: RE2 has no \u escape
    r'(?:^|/)(?:CON|PRN|AUX|NUL|CONIN\$|CONOUT\$|COM[0-9' '\u00b9\u00b2\u00b3' r']|'
    r'LPT[0-9' '\u00b9\u00b2\u00b3' r']) *(?:[./]|$)', re.IGNORECASE)
_TRAILING_SEGMENT = re.compile(r'[. ](?:/|$)')
_WINDOWS_CHARACTER = re.compile(r'[<>:"|?*\\\x00-\x1f]')
# The patterns of each problem a name's text shows (`transforms/output/portability.py` runs them
# over a column of names at once, with Arrow's RE2, in this same meaning).
PROBLEM_PATTERNS = {'reserved': '(?i)' + _RESERVED_SEGMENT.pattern,
                    'trailing': _TRAILING_SEGMENT.pattern,
                    'character': _WINDOWS_CHARACTER.pattern}
# Any of the three, in one pass: most names match none, and are done with it.
_ANY_PROBLEM = re.compile('|'.join(
    r.pattern for r in (_RESERVED_SEGMENT, _TRAILING_SEGMENT, _WINDOWS_CHARACTER)),
    re.IGNORECASE)


def _problems(text: str) -> List[str]:
  """The segment problems `windows_problems` lists, found in `text` (a name or one
  segment) by three regular expressions: a name takes about 1 us."""
  found = []
  if not _ANY_PROBLEM.search(text):
    return found
  if _RESERVED_SEGMENT.search(text):
    found.append('reserved')
  if _TRAILING_SEGMENT.search(text):
    found.append('trailing')
  if _WINDOWS_CHARACTER.search(text):
    found.append('character')
  return found


def windows_problems(name: str) -> List[str]:
  """What in a relative output name Windows refuses (a subset of PORTABILITY_PROBLEMS):
  a reserved device name as a segment's part before its first dot (spaces before the
  dot too), a segment ending in a dot or space (Windows drops them: `a.` becomes `a`),
  one of <>:"|?*\\ or a control character, more than PORTABLE_PATH_CHARS characters in
  all."""
  found = _problems(name)
  if len(name) > PORTABLE_PATH_CHARS // 2 and _utf16_length(name) > PORTABLE_PATH_CHARS:
    found.append('long')
  return found


def _hash_suffix(text: str) -> str:
  return '~' + hashlib.sha1(text.encode('utf-8')).hexdigest()[:PORTABLE_HASH_CHARS]


def _with_suffix(segment: str, suffix: str, limit_bytes: int) -> str:
  """`segment` with `suffix` before its first dot (after a leading one), the part before
  it cut so the whole takes at most `limit_bytes` UTF-8 bytes."""
  cut = segment.find('.', 1)
  base, rest = (segment, '') if cut < 0 else (segment[:cut], segment[cut:])
  room = limit_bytes - len((suffix + rest).encode('utf-8'))
  base = base.encode('utf-8')[:max(room, 1)].decode('utf-8', 'ignore') or '_'
  return base + suffix + rest


def portable_segment(segment: str) -> str:
  """One segment made safe on Windows and unique on case-insensitive disks.

  A segment that has a Windows problem, or whose `fold` is not itself (it holds a capital
  letter, or text not in NFC), gets `~` and 8 hex digits of the SHA-1 of its exact text
  before its first dot (`CON` -> `CON~…`, `aux.png` -> `aux~….png`, `Cat` -> `Cat~…`),
  after its trailing dots and spaces are dropped and <>:"|?*\\ and control characters
  become `_`. Segments already safe and in their folded form stay as they are, so two
  segments that differ only by case can never end up equal under folding.
  """
  if segment == fold(segment) and not _problems(segment):
    return segment
  fixed = ''.join('_' if ch in _WINDOWS_CHARACTERS or ord(ch) < 32 else ch
                  for ch in segment.rstrip(' .')) or '_'
  return _with_suffix(fixed, _hash_suffix(segment), MAX_SEGMENT_BYTES)


def portable_name(name: str) -> str:
  """`name` with every segment `portable_segment`, and at most PORTABLE_PATH_CHARS
  characters: a longer one has its last segment's part before the first dot cut, with
  the hash of the whole name; raises NamingError(unsafe_name) when its folders alone
  leave no room. Deterministic: the same name always gives the same portable name."""
  segments = [portable_segment(s) for s in name.split('/')]
  portable = '/'.join(segments)
  excess = _utf16_length(portable) - PORTABLE_PATH_CHARS
  if excess > 0:
    last = segments[-1]
    cut = last.find('.', 1)
    base, rest = (last, '') if cut < 0 else (last[:cut], last[cut:])
    suffix = _hash_suffix(name)
    keep = len(base) - excess - len(suffix)
    while keep > 0 and _utf16_length('/'.join(segments[:-1] + [base[:keep] + suffix + rest])
                                     ) > PORTABLE_PATH_CHARS:
      keep -= 1
    if keep < 1:
      raise errors.NamingError(
          errors.UNSAFE_NAME,
          f'output name {name[:200]!r} cannot be made portable: its folders alone take '
          f'nearly {PORTABLE_PATH_CHARS} characters; shorten --name_template\'s folders')
    segments[-1] = base[:keep].rstrip(' .') + suffix + rest
    portable = '/'.join(segments)
  return check_relative_path(portable)
