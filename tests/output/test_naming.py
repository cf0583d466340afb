"""Output names: templates, safe values and paths, reserved names, stems and splits."""

import enum

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from transforms import errors
from transforms.images import decode
from transforms.images import name_templates
from transforms.images import render
from transforms.inputs import shard_names
from transforms.inputs import tfrecord
from transforms.output import naming
from transforms.pixels import encode


def _values(**extra):
  values = naming.name_values(
      index=12, n=0, stem='train-00001-of-00004', ext='png',
      features={'image/filename': 'cat 1.jpg', 'label': 2, 'id': 'a-7'}, id_key='id',
      label_key='label', label_names=['bird', 'cat', 'dog'], split='train')
  values.update(extra)
  return values


@pytest.mark.parametrize('template,expected', [
    (name_templates.DEFAULT_TEMPLATE, 'train-00001-of-00004-000012.png'),
    (name_templates.CLASS_TEMPLATE, 'dog/train-00001-of-00004-000012.png'),
    ('{split}/{label}/{id}.{ext}', 'train/2/a-7.png'),
    ('{image/filename}.{ext}', 'cat 1.jpg.png'),
    ('{index:08d}-{n:02d}.{ext}', '00000012-00.png'),
])
def test_templates_render(template, expected):
  assert naming.NameTemplate(template).render(_values()) == expected


def test_unknown_template_field_lists_the_available_ones():
  with pytest.raises(errors.ConfigError) as info:
    name_templates.check_template('{labl}/{index}.{ext}', ['index', 'ext', 'label'])
  assert '{labl}' in str(info.value) and '{ext}, {index}, {label}' in str(info.value)


@pytest.mark.parametrize('hostile', ['../../x', '/etc/x', 'a/../../b', 'C:\\x', '\\\\srv\\x',
                                     '..', '.', 'a\x00b', 'a\r\nb', 'x' * 2000,
                                     '\uff0e\uff0e\uff0fetc', 'a\u2215b'])
def test_hostile_values_stay_one_safe_segment(hostile):
  name = naming.NameTemplate('{id}.{ext}').render(_values(id=hostile))
  assert '/' not in name and '\\' not in name and '\x00' not in name
  assert '\r' not in name and '\n' not in name
  assert not name.startswith('.')
  assert len(name.encode()) <= naming.MAX_SEGMENT_BYTES


def test_long_values_keep_distinct_names():
  first = naming.safe_value('x' * 2000 + 'a')
  second = naming.safe_value('x' * 2000 + 'b')
  assert first != second and len(first.encode()) <= naming.MAX_VALUE_BYTES


@pytest.mark.parametrize('name, problem', [
    ('', 'empty, absolute'), ('/x.png', 'empty, absolute'), ('a\\b.png', 'backslash'),
    ('a\x00b.png', 'NUL'), ('a//b.png', '"." or ".."'), ('a/./b.png', '"." or ".."'),
    ('../b.png', '"." or ".."'), ('a/', '"." or ".."'),
    ('a/' + 'x' * 241, 'segment is longer'), ('\u00e9' * 121, 'segment is longer'),
    ('/'.join(['x' * 200] * 5) + '/y', 'longer than 1000'),
    ('_manifest.jsonl', "unrecord's own"), ('_manifest/a.png', "unrecord's own"),
    ('_unrecord_x/a.png', "unrecord's own"),
    ('a/x.png' + naming.TEMP_SUFFIX, 'reserved for'),
    ('d' + naming.TEMP_SUFFIX + '/x.png', 'reserved for'), (naming.TEMP_SUFFIX, 'reserved'),
])
def test_unsafe_output_paths_are_refused_with_the_reason(name, problem):
  with pytest.raises(errors.NamingError) as info:
    naming.check_relative_path(name)
  assert info.value.reason == 'unsafe_name' and problem in str(info.value)


@pytest.mark.parametrize('name', ['a.png', 'x' * 240, '\u00e9' * 120 + '/' + 'x' * 240,
                                  '/'.join(['x' * 240] * 4) + '/' + 'y' * 35,
                                  'sub/_manifest.jsonl', 'a.b/.c.png',
                                  'd' + naming.TEMP_SUFFIX + 'x/x.png'])
def test_safe_output_paths_pass_unchanged(name):
  assert naming.check_relative_path(name) == name


def test_numbers_keep_their_format_specs_and_everything_else_is_safe_text():
  class Level(enum.IntEnum):
    HIGH = 3

  template = naming.NameTemplate('{a:05.1f}-{b:03d}-{c}-{d}-{e}.{ext}')
  name = template.render(_values(a=np.float64(2.5), b=Level.HIGH, c=True, d='x/y', e=7))
  assert name == '002.5-003-True-x_y-7.png'
  with pytest.raises(errors.NamingError) as info:
    naming.NameTemplate('{missing}.{ext}').render(_values())
  assert info.value.reason == 'missing_feature' and '{missing}' in str(info.value)
  with pytest.raises(errors.NamingError) as info:
    naming.NameTemplate('{stem:05d}.{ext}').render(_values())
  assert info.value.reason == 'unsafe_name'


def test_template_that_escapes_or_takes_a_reserved_name_is_rejected():
  with pytest.raises(errors.ConfigError):
    name_templates.check_template('../{index}.{ext}', ['index', 'ext'])
  with pytest.raises(errors.NamingError) as info:
    naming.NameTemplate('_manifest.jsonl').render(_values())
  assert info.value.reason == 'unsafe_name'


@pytest.mark.parametrize('url, stem', [
    ('gs://b/data/train.tfrecord.gz', 'train'),
    ('mnist-train.tfrecord-00001-of-00004', 'mnist-train-00001'),
    ('/d/train.tfrecord-00001-of-00004', 'train-00001'),
    ('/d/train.tfrecord-00002-of-00004.gz', 'train-00002'),
    ('part-00003.tfrecords', 'part-00003'),
    ('shard.tfrecord.7', 'shard-7'),
    ('images.2024-01-01.rec', 'images.2024-01-01'),
    ('train-00000-of-00002', 'train-00000-of-00002'),
])
def test_stem_keeps_what_tells_shards_apart(url, stem):
  assert shard_names.stem_of(url) == stem


_FIELD_VALUES = st.one_of(st.integers(-5, 10**7), st.text(max_size=12), st.booleans(),
                          st.floats(allow_nan=False, allow_infinity=False))


@settings(max_examples=300, deadline=None)
@given(template=st.sampled_from([
           name_templates.DEFAULT_TEMPLATE, name_templates.BATCH_TEMPLATE,
           name_templates.CLASS_TEMPLATE,
           name_templates.KEYS_PREFIX + name_templates.DEFAULT_TEMPLATE, '{stem}/{n}-{index}',
           '{split}/{label}/{id}.{ext}', '{index}.{ext}', '{stem}-{index}.jpg',
           '{image/filename}', '{index}-{stem}', '{label}-{index}.{ext}']),
       features=st.dictionaries(
           st.sampled_from(['index', 'n', 'key', 'stem', 'ext', 'split', 'id', 'label',
                            'label_name', 'image/filename', 'other']),
           _FIELD_VALUES, max_size=6),
       index=st.integers(0, 10**6), n=st.integers(0, 40),
       path=st.sampled_from(['/d/train.tfrecord-00001-of-00004', 'gs://b/test-x.tfrecord',
                             '/d/_unrecord.tfrecord', '/d/part-7.tfr']),
       id_key=st.sampled_from([None, 'id', 'other']),
       label_key=st.sampled_from([None, 'label']),
       label_names=st.sampled_from([None, ('bird', 'cat', 'dog')]))
def test_the_namer_names_every_image_as_its_template_renders_name_values(
    template, features, index, n, path, id_key, label_key, label_names):
  # The Namer keeps what one file's images share, and skips the features for templates
  # of fields every image has: its names (and errors) are the plain path's.
  config = render.RenderConfig(encode=encode.EncodeSpec(format='webp'),
                               name_template=template, id_key=id_key, label_key=label_key,
                               label_names=label_names)
  image = decode.DecodedImage(
      ref=tfrecord.RecordRef(path, index, 0), n=n, pixels=None, axes='hwc',
      source_dtype='uint8', encoding='raw', key='image', features=features)

  def plain():
    name = naming.NameTemplate(template).render(naming.name_values(
        index=index, n=n, key='image', stem=shard_names.stem_of(path), ext='webp',
        features=features, id_key=id_key, label_key=label_key, label_names=label_names,
        split=shard_names.split_of(path)))
    if not naming.ends_in_extension(template):
      name = naming.check_relative_path(naming.with_extension(name, 'webp'))
    return name

  def outcome(make):
    try:
      return make()
    except errors.NamingError as e:
      return e.reason, str(e)

  namer = naming.Namer(config)
  assert outcome(lambda: namer.name(image)) == outcome(plain)
  assert outcome(lambda: namer.name(image)) == outcome(plain)  # from what it kept


# -- portability: Windows and case-insensitive disks (docs/export.md, "Output names")

@pytest.mark.parametrize('name, problems', [
    ('CON.png', ['reserved']), ('con', ['reserved']), ('x/Nul.tar.gz', ['reserved']),
    ('COM\u00b9.png', ['reserved']), ('LPT9/x.png', ['reserved']), ('COM10.png', []),
    ('a./x.png', ['trailing']), ('b /x.png', ['trailing']), ('x:y.png', ['character']),
    ('a\x01.png', ['character']), ('a/' + 'x' * 199, ['long']), ('console.png', []),
])
def test_windows_problems(name, problems):
  assert naming.windows_problems(name) == problems


def test_portable_names_are_stable_distinct_under_folding_and_bounded():
  names = ['Cat.png', 'cat.png', 'CAT.png', 'e\u0301.png', '\u00e9.png', 'CON.png',
           'aux.png.png', 'a./x.png', 'a/x.png', 'x:y.png', 'x_y.png']
  portable = [naming.portable_name(n) for n in names]
  assert portable == [naming.portable_name(n) for n in names]  # deterministic
  assert len({naming.fold(p) for p in portable}) == len(names)
  assert all(not naming.windows_problems(p) for p in portable)
  assert naming.portable_name('cat.png') == 'cat.png'  # safe and folded: unchanged
  long_name = 'd/' + 'Q' * 230 + '.png'
  made = naming.portable_name(long_name)
  assert len(made) == naming.PORTABLE_PATH_CHARS and made.endswith('.png')
  assert made != naming.portable_name('d/' + 'Q' * 231 + '.png')
  with pytest.raises(errors.NamingError):
    naming.portable_name('f' * 199 + '/x.png')
