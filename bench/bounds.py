"""The bound of each steady target, from this code's own step costs (issue 24).

A steady ratio compares the job with a script that keeps none of its guarantees. What
the ratio can be at best is measured on one core, where neither shares a core with
anything: the script alone on one worker (its own clock's marginal from the small run
to the large one, so its start is left out as the job's is), the job's per-range work
alone (`bench.per_image`, the export without Beam), and each guarantee's step alone
(`bench.per_image --steps`). `make bench` prints these with their arithmetic beside the
targets, so a missed target says whether this code could meet it:

  (a) and its moonshot: expert / (job's work + the larger run's extra fixed steps).
      The job's work includes its guarantees; the fixed steps (planning more files,
      merging more manifest rows) are what the larger run's wall adds beyond its work.
  (d): floor / (floor + guarantees): the job at the floor's cost for every step both
      do (reading, writing the payload atomically), plus what only the job does.

All figures are microseconds an image on one core.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List

# The step labels of `bench.per_image --steps` that are guarantees the scripts do not keep.
NAME = 'name'
SHA256 = 'sha256 of the file'
ROW = 'manifest row, its hash included'
ENTRY = 'manifest entry (a chunk at a time)'


@dataclasses.dataclass(frozen=True)
class Bound:
  """The best a target's ratio can be on this code, and how it was reached."""
  target: str
  goal: float
  ratio: float
  arithmetic: str

  @property
  def within(self) -> bool:
    """Whether the goal is within the bound (a miss is then the run's, not the code's)."""
    return self.ratio >= self.goal


def guarantees(steps: Dict[str, float]) -> Dict[str, float]:
  """The guarantees' own costs: the row's hash is the sha256 step, so counted once."""
  return {'name': steps[NAME], 'sha256': steps[SHA256],
          'row beyond its hash': steps[ROW] - steps[SHA256], 'entry': steps[ENTRY]}


def fixed_growth_us(small_wall: float, small_work: float, large_wall: float,
                    large_work: float, extra_images: int, cores: int) -> float:
  """What a larger run's wall adds beyond its work, per extra image on each core.

  0 when the runs hold the same images (the quick smoke run) or the larger added
  nothing beyond its work.
  """
  if extra_images <= 0:
    return 0.0
  extra = (large_wall - large_work) - (small_wall - small_work)
  return max(extra, 0.0) * cores / extra_images * 1e6


def _listed(costs: Dict[str, float]) -> str:
  return ' + '.join(f'{name} {cost:.1f}' for name, cost in costs.items())


def steady_bounds(expert_us: float, work_us: float, fixed_us: float,
                  steps: Dict[str, float], targets: Dict[str, float]) -> List[Bound]:
  """(a)'s bounds, one for each of its targets (name: goal): the expert on one worker
  against the job's work plus fixed steps."""
  owed = guarantees(steps)
  ratio = expert_us / (work_us + fixed_us)
  arithmetic = (f'expert {expert_us:.0f} / (job {work_us:.0f} + fixed steps '
                f'{fixed_us:.0f}) = {ratio:.2f}; the job\'s {work_us:.0f} includes its '
                f'guarantees, {sum(owed.values()):.0f} ({_listed(owed)})')
  return [Bound(name, goal, ratio, arithmetic) for name, goal in targets.items()]


def passthrough_bound(floor_us: float, work_us: float, steps: Dict[str, float],
                      target: str, goal: float) -> Bound:
  """(d)'s bound: the floor, plus the guarantees it does not keep."""
  owed = guarantees(steps)
  cost = sum(owed.values())
  ratio = floor_us / (floor_us + cost)
  arithmetic = (f'floor {floor_us:.1f} / (floor {floor_us:.1f} + guarantees {cost:.1f}: '
                f'{_listed(owed)}) = {ratio:.2f}; this code\'s whole per-range work '
                f'{work_us:.1f}: {floor_us / work_us:.2f} of the floor')
  return Bound(target, goal, ratio, arithmetic)
