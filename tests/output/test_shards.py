"""Shard names and the record ranges of a packed export: pure functions."""

import pytest

from transforms.output import shards


@pytest.mark.parametrize('ordinal, ranges, expected', [
    (0, 1, 'train-000003.tar'),  # a file read whole: the names it always had
    (0, 3, 'train-r00000-000003.tar'),
    (2, 3, 'train-r00002-000003.tar'),
    (2, 7, 'train-r00002-000003.tar'),  # the count is not in the name
])
def test_a_cut_file_names_each_range_s_shards(ordinal, ranges, expected):
  assert shards.shard_name('gs://b/in/train.tfrecord', 3, 'tar', '', ordinal,
                           ranges) == expected


def test_cut_names_sort_in_record_order_and_keep_clear_of_tfds_stems():
  cut = [shards.shard_name('in/train.tfrecord', shard, 'tar', '', k, 12)
         for k in range(12) for shard in range(11)]
  assert sorted(cut) == cut and len(set(cut)) == len(cut)
  # TFDS's train.tfrecord-0000k-of-N, read whole, has stem train-0000k: no name of
  # train.tfrecord's ranges is one of its shards'.
  tfds = {shards.shard_name(f'in/train.tfrecord-{k:05d}-of-00012', shard, 'tar')
          for k in range(12) for shard in range(11)}
  assert not tfds & set(cut)
  assert shards.shard_name('in/train.tfrecord', 0, 'parquet', 'train/', 1, 2) == (
      'train/train-r00001-000000.parquet')


@pytest.mark.parametrize('spec, split, expected', [
    (shards.ShardSpec('tar'), 64 << 20, shards.DEFAULT_BYTES),  # 1 GB shards
    (shards.ShardSpec('tar', max_bytes=20_000), 1 << 20, 1 << 20),
    (shards.ShardSpec('parquet', max_bytes=5 << 20), 1 << 20, 5 << 20),
    (shards.ShardSpec('tar', max_samples=100), 2 << 20, 2 << 20),  # no byte bound
])
def test_a_range_spans_at_least_a_shard(spec, split, expected):
  assert shards.range_bytes(spec, split) == expected

