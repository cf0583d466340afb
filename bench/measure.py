"""Runs one command the way a user does and measures it: wall time and memory.

Memory is sampled every 250 ms over the whole process tree: the peak of the summed RSS
(pages shared between processes counted in each), and each process's own high-water mark
(VmHWM from /proc, which the kernel keeps, so no peak between samples is missed).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import threading
import time
from typing import Dict, List, Optional, Sequence

import psutil

SAMPLE_SECONDS = 0.25


@dataclasses.dataclass
class Measurement:
  wall_seconds: float
  tree_peak_rss: int
  process_peaks: Dict[int, int]  # pid -> VmHWM bytes; the root is `root_pid`
  root_pid: int
  result: Optional[dict]  # the command's last stdout line, when it is JSON
  stderr_tail: str

  @property
  def launcher_peak(self) -> int:
    return self.process_peaks.get(self.root_pid, 0)

  @property
  def worker_peak(self) -> int:
    """The largest high-water mark among the child processes (0 without children)."""
    return max((v for pid, v in self.process_peaks.items() if pid != self.root_pid),
               default=0)


def _vm_hwm(pid: int) -> Optional[int]:
  try:
    with open(f'/proc/{pid}/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  except OSError:
    return None
  return None


def run(command: Sequence[str], env: Optional[dict] = None, cwd: Optional[str] = None,
        timeout: float = 1800) -> Measurement:
  """Runs `command`, raising CalledProcessError (with its stderr) if it fails."""
  start = time.perf_counter()
  process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=env, cwd=cwd, text=True)
  root = psutil.Process(process.pid)
  peaks: Dict[int, int] = {}
  tree_peak = 0
  stdout: List[str] = []
  stderr: List[str] = []
  readers = [threading.Thread(target=lambda s=s, out=out: out.extend(s), daemon=True)
             for s, out in ((process.stdout, stdout), (process.stderr, stderr))]
  for reader in readers:
    reader.start()
  while process.poll() is None:
    if time.perf_counter() - start > timeout:
      process.kill()
      raise TimeoutError(f'{command[:3]} ran over {timeout} s')
    total = 0
    try:
      members = [root] + root.children(recursive=True)
    except psutil.Error:
      members = []
    for member in members:
      try:
        total += member.memory_info().rss
      except psutil.Error:
        continue
      hwm = _vm_hwm(member.pid)
      if hwm:
        peaks[member.pid] = max(peaks.get(member.pid, 0), hwm)
    tree_peak = max(tree_peak, total)
    time.sleep(SAMPLE_SECONDS)
  wall = time.perf_counter() - start
  for reader in readers:
    reader.join()
  if process.returncode != 0:
    raise subprocess.CalledProcessError(process.returncode, list(command),
                                        ''.join(stdout), ''.join(stderr)[-6000:])
  result = None
  lines = ''.join(stdout).strip().splitlines()
  if lines:
    try:
      result = json.loads(lines[-1])
    except ValueError:
      result = None
  return Measurement(wall, tree_peak, peaks, process.pid, result, ''.join(stderr)[-2000:])
