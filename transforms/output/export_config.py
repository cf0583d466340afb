"""The resolved job, as every step of the export reads it: `ExportConfig`.

`plan.plan_export` makes it at launch; the per-range work (transforms/export.py), the
manifest, the dead letters and the report take it. It sits in the output package, under
the modules that read it, and holds the output options' own choices (the manifest's
formats and part size) beside their defaults, as each stage's config does.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from transforms import errors
from transforms.images import decode
from transforms.images import render
from transforms.inputs import record_ranges
from transforms.output import checksums
from transforms.output import shards as shards_lib

MANIFEST_FORMATS = ('jsonl', 'parquet')
# Rows per manifest part: a part's task takes them a slice at a time, so this bounds its
# work, the commit's copies (one per part) and the parts a reader lists, not its memory.
MANIFEST_PART_ROWS = 100_000


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """The resolved job: inputs, output root, and how each image is read and rendered."""
  patterns: Tuple[str, ...]
  output: str
  read: record_ranges.ReadConfig = record_ranges.ReadConfig()
  image: decode.ImageSpec = decode.ImageSpec()
  # Further image keys written from each record (several --image_key values).
  more_images: Tuple[decode.ImageSpec, ...] = ()
  render: render.RenderConfig = render.RenderConfig()
  skip_existing: bool = False
  max_failures: int = 0
  run_started: float = 0.0
  options_used: Tuple[Tuple[str, object], ...] = ()
  # Where workers send live counts (local runs; see transforms/progress.py).
  progress: Optional[Tuple[str, int]] = None
  # --incremental: the shards this run processes, with their fingerprints; the manifest
  # keeps other shards' rows and the state file records these on success.
  incremental: bool = False
  processed: Tuple[Tuple[str, dict], ...] = ()
  # --pack without --incremental: every input file this run reads. It packs each of them
  # anew, whole, so a previous shard made from one and not written again holds only
  # images this run no longer makes: it goes (manifest.keeps_previous).
  packed_sources: Tuple[str, ...] = ()
  # The output settings that make this export what it is (root_claim.identity); the
  # incremental state records them, so changed settings redo every shard.
  settings: Tuple[Tuple[str, object], ...] = ()
  # --overwrite: the root's earlier images that this run does not write are removed.
  overwrite: bool = False
  # An object-store root's lease (root_claim), released by the job's last step.
  lock_run_id: Optional[str] = None
  # What the launch settled (plan.settled_choices), as JSON: the report shows it.
  choices: str = '{}'
  # The manifest parts' format (transforms/output/manifest.py): 'jsonl' or 'parquet'.
  manifest_format: str = 'jsonl'
  manifest_part_rows: int = MANIFEST_PART_ROWS
  # Each row's checksum of its file (transforms/output/checksums.py): sha256, crc32c or blake3.
  checksum: str = 'sha256'
  # Files of a folder input skipped at launch: they hold no TFRecord (record_ranges.list_inputs).
  skipped_inputs: Tuple[str, ...] = ()
  # Whether the root holds a manifest (or a commit a killed run left) when the run
  # starts, under its claim (`manifest.any_previous`): without one, the job has no
  # previous rows to read and skips that step's two stages.
  previous_manifest: bool = True
  # --pack tar|parquet and the shards' bounds (transforms/output/shards.py); 'files'
  # writes a file per image.
  shards: shards_lib.ShardSpec = shards_lib.ShardSpec()

  def __post_init__(self):
    if not self.patterns and not self.incremental:
      raise errors.ConfigError('no input given; pass --input PATTERN')
    if not self.output:
      raise errors.ConfigError('no output given; pass --output URL')
    if self.max_failures < 0:
      raise errors.ConfigError('--max_failures must be 0 or more')
    if self.manifest_format not in MANIFEST_FORMATS:
      raise errors.ConfigError(f'--manifest_format must be one of '
                               f'{", ".join(MANIFEST_FORMATS)}')
    if self.checksum not in checksums.ALGORITHMS:
      raise errors.ConfigError(f'--checksum must be one of '
                               f'{", ".join(checksums.ALGORITHMS)}')
    if self.manifest_part_rows < 1:
      raise errors.ConfigError('--manifest_part_rows must be 1 or more')
    if self.overwrite and (self.skip_existing or self.incremental):
      raise errors.ConfigError(
          '--overwrite replaces the output; it does not go with --skip_existing or '
          '--incremental, which keep it')
