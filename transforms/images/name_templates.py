"""The --name_template grammar: the built-in templates, the fields they name, and
parsing and checking one.

Below the output package because a render config checks its template when it is made
(`render.RenderConfig`); the names themselves are made in transforms/output/naming.py.
"""

from __future__ import annotations

import string
from typing import List, Sequence

from transforms import errors

DEFAULT_TEMPLATE = '{stem}-{index:06d}.{ext}'
BATCH_TEMPLATE = '{stem}-{index:06d}-{n:03d}.{ext}'
CLASS_TEMPLATE = '{label_name}/{stem}-{index:06d}.{ext}'
CLASS_BATCH_TEMPLATE = '{label_name}/{stem}-{index:06d}-{n:03d}.{ext}'
BUILTIN_FIELDS = ('id', 'index', 'n', 'key', 'stem', 'label', 'label_name', 'split', 'ext')
# With several image keys, the default templates keep each key's images in its folder.
KEYS_PREFIX = '{key}/'
# With --layout class over records with splits: train/, test/, ... each its own root.
SPLIT_PREFIX = '{split}/'


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
