"""shards.TarPacker writes what tarfile writes, byte for byte, faster: its own ustar
headers where a member fits one, tarfile's (with a PAX header first) where not."""

import io
import tarfile

import pytest
import webdataset

from transforms.output import shards


def _sample(key, data, label=3):
  meta = shards.sample_meta(id_value='a/b', label=label, label_name=None,
                            source='gs://bucket/train.tfrecord-00000-of-00001', index=7,
                            offset=1234, n=None, key='image')
  return shards.Sample(key, 'png', data, meta, label)


SAMPLES = [
    _sample('train-00000-000000', b'\x89PNG' * 100),
    _sample('train-00000-000001', b'', label=None),  # an empty member, no .cls
    _sample('cat/train-00000-000002', b'x' * 512),  # a whole block: no padding
    _sample('k' * 95, b'y' * 513),  # KEY.json is 100 bytes: the longest plain name
    _sample('k' * 96, b'z' * 3),  # KEY.json is 101 bytes: tarfile's PAX header
    _sample('caf\u00e9/\u732b-000003', b'w' * 1000),  # not ASCII: tarfile's PAX header
]


def _with_tarfile(samples) -> bytes:
  """What the packer replaced: tarfile.addfile of each member, then close."""
  out = io.BytesIO()
  with tarfile.open(fileobj=out, mode='w', format=tarfile.PAX_FORMAT) as tar:
    for sample in samples:
      for name, data in sample.members():
        tar.addfile(shards._tar_info(name, len(data)), io.BytesIO(data))  # pylint: disable=protected-access
  return out.getvalue()


def _packed(samples):
  out = io.BytesIO()
  packer = shards.TarPacker(out)
  placed, predicted = [], []
  for sample in samples:
    predicted.append(packer.size_with(packer.cost(sample)))
    placed.append(packer.add(sample))
    assert packer.size_with(0) == predicted[-1]  # cost said what add then wrote
  packer.close()
  return out.getvalue(), placed


@pytest.mark.parametrize('count', [1, 2, len(SAMPLES)])
def test_the_packer_writes_tarfiles_bytes(count):
  data, placed = _packed(SAMPLES[:count])
  assert data == _with_tarfile(SAMPLES[:count])
  assert len(data) % tarfile.RECORDSIZE == 0
  for sample, (member, offset) in zip(SAMPLES, placed):
    assert member == f'{sample.key}.png'
    assert data[offset:offset + len(sample.data)] == sample.data


def test_webdataset_reads_every_member_back():
  data, _ = _packed(SAMPLES)
  found = {member['fname']: member['data']
           for member in webdataset.tariterators.tar_file_iterator(io.BytesIO(data))}
  expected = {name: value for s in SAMPLES for name, value in s.members()}
  assert found == expected


def test_a_size_of_8_gib_or_more_gets_tarfiles_header():
  assert shards._tar_header('a.png', 8 ** 11) == shards._tar_info(  # pylint: disable=protected-access
      'a.png', 8 ** 11).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, 'surrogateescape')
  assert shards._tar_header('a.png', 8 ** 11 - 1) == shards._tar_info(  # pylint: disable=protected-access
      'a.png', 8 ** 11 - 1).tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, 'surrogateescape')
