"""A local Flink 1.19.3 cluster and Beam's Flink job server, for tests and for trying it.

    python deploy/flink/local_cluster.py up|down|status

`up` builds the job-server jar from deploy/flink/job-server/pom.xml with Maven (again only
when the pom changed), installs Flink 1.19.3 from PyPI into its own folder (never the
project's venv), then starts a JobManager, a TaskManager with 2 slots and the job server,
each recorded by its pid, and waits until the REST API shows the 2 slots and the job port
accepts. `down` stops exactly those pids. Both may be run any number of times.
Everything lives under build/flink/ (ignored by git); nothing is fetched after `up`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POM = os.path.join(REPO, 'deploy', 'flink', 'job-server', 'pom.xml')
HOME = os.environ.get('UNRECORD_FLINK_HOME', os.path.join(REPO, 'build', 'flink'))

FLINK_VERSION = '1.19.3'
BEAM_JOB_SERVER_VERSION = '2.62.0'
JAR = os.path.join(HOME, f'beam-runners-flink-1.19-job-server-{BEAM_JOB_SERVER_VERSION}.jar')
JAR_STAMP = JAR + '.pom-sha256'
FLINK_DIR = os.path.join(HOME, f'flink-{FLINK_VERSION}')
FLINK_HOME = os.path.join(FLINK_DIR, 'pyflink')
CONF_DIR = os.path.join(HOME, 'conf')
LOG_DIR = os.path.join(HOME, 'log')
RUN_DIR = os.path.join(HOME, 'run')
ARTIFACTS_DIR = os.path.join(HOME, 'artifacts')

HOST = '127.0.0.1'
REST_PORT = 8081
JOB_PORT = 8099
ARTIFACT_PORT = 8098
EXPANSION_PORT = 8097
SLOTS = 2
FLINK_MASTER = f'{HOST}:{REST_PORT}'
JOB_ENDPOINT = f'localhost:{JOB_PORT}'
REST_URL = f'http://{HOST}:{REST_PORT}'

# For 2 cores. Beam's batch jobs need the sort-shuffle floor lowered: with Flink's default
# (512 buffers) every job fails with "Insufficient number of network buffers: required
# 512" in a network pool of this size. The restart strategy retries a job whose Python
# worker or TaskManager died; the slot timeout bounds the wait for a TaskManager that
# never comes back.
CONFIG = f"""\
# Written by deploy/flink/local_cluster.py; edit CONFIG there.
jobmanager.rpc.address: {HOST}
jobmanager.bind-host: {HOST}
jobmanager.memory.process.size: 1024m
taskmanager.host: {HOST}
taskmanager.bind-host: {HOST}
taskmanager.numberOfTaskSlots: {SLOTS}
taskmanager.memory.process.size: 1536m
taskmanager.memory.network.fraction: 0.25
taskmanager.memory.network.min: 256m
taskmanager.memory.network.max: 384m
taskmanager.memory.managed.fraction: 0.2
taskmanager.network.sort-shuffle.min-buffers: 64
rest.address: {HOST}
rest.bind-address: {HOST}
rest.port: {REST_PORT}
parallelism.default: {SLOTS}
restart-strategy.type: fixed-delay
restart-strategy.fixed-delay.attempts: 3
restart-strategy.fixed-delay.delay: 2000 ms
slot.request.timeout: 10000
heartbeat.timeout: 20000
io.tmp.dirs: {os.path.join(HOME, 'tmp')}
"""

PROCESSES = ('jobmanager', 'taskmanager', 'job-server')


def say(message: str) -> None:
  print(f'flink: {message}', file=sys.stderr, flush=True)


def _sha256(path: str) -> str:
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def ensure_jar() -> None:
  """Builds the shaded job server when the pom changed since the last build."""
  want = _sha256(POM)
  if os.path.exists(JAR) and os.path.exists(JAR_STAMP):
    with open(JAR_STAMP) as f:
      if f.read().strip() == want:
        return
  os.makedirs(HOME, exist_ok=True)
  build = os.path.join(HOME, 'maven')
  say(f'building the job server with Maven (pom changed or no jar); log {build}.log')
  started = time.time()
  with open(build + '.log', 'w') as log:
    code = subprocess.call(['mvn', '-B', '-q', '-f', POM, f'-Djobserver.build={build}',
                            'package'], stdout=log, stderr=subprocess.STDOUT)
  if code != 0:
    sys.exit(f'flink: the job-server build failed (mvn exit {code}); see {build}.log')
  built = os.path.join(build, os.path.basename(JAR))
  os.replace(built, JAR)
  with open(JAR_STAMP, 'w') as f:
    f.write(want + '\n')
  say(f'built {JAR} in {time.time() - started:.0f} s')


def ensure_flink() -> None:
  """Flink's distribution from PyPI's wheel and libraries, without their dependencies."""
  if os.path.exists(os.path.join(FLINK_HOME, 'bin', 'jobmanager.sh')) and \
      os.path.isdir(os.path.join(FLINK_HOME, 'lib')):
    return
  staging = FLINK_DIR + '.partial'
  shutil.rmtree(staging, ignore_errors=True)
  say(f'installing Flink {FLINK_VERSION} from PyPI into {FLINK_DIR}')
  started = time.time()
  code = subprocess.call([sys.executable, '-m', 'pip', 'install', '--quiet',
                          '--disable-pip-version-check', '--no-deps', '--target', staging,
                          f'apache-flink=={FLINK_VERSION}',
                          f'apache-flink-libraries=={FLINK_VERSION}'])
  if code != 0:
    sys.exit(f'flink: pip could not install apache-flink {FLINK_VERSION} (exit {code})')
  for name in os.listdir(os.path.join(staging, 'pyflink', 'bin')):
    path = os.path.join(staging, 'pyflink', 'bin', name)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
  shutil.rmtree(FLINK_DIR, ignore_errors=True)
  os.replace(staging, FLINK_DIR)
  say(f'installed Flink in {time.time() - started:.0f} s')


def write_config() -> None:
  os.makedirs(CONF_DIR, exist_ok=True)
  with open(os.path.join(CONF_DIR, 'config.yaml'), 'w') as f:
    f.write(CONFIG)
  shipped = os.path.join(FLINK_HOME, 'conf')
  for name in os.listdir(shipped):  # the log4j settings the scripts name
    if name.startswith('log4j'):
      shutil.copy(os.path.join(shipped, name), os.path.join(CONF_DIR, name))


def _pid_file(name: str) -> str:
  return os.path.join(RUN_DIR, f'{name}.pid')


def running_pid(name: str) -> Optional[int]:
  """The recorded pid of `name` if that process is still ours (a java with our paths)."""
  try:
    with open(_pid_file(name)) as f:
      pid = int(f.read().strip())
    with open(f'/proc/{pid}/cmdline', 'rb') as f:
      cmdline = f.read().decode(errors='replace')
  except (OSError, ValueError):
    return None
  if HOME not in cmdline and FLINK_HOME not in cmdline:
    return None  # the pid was reused by another program
  try:
    with open(f'/proc/{pid}/stat') as f:
      if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
        return None
  except OSError:
    return None
  return pid


def _env() -> Dict[str, str]:
  env = dict(os.environ, FLINK_HOME=FLINK_HOME, FLINK_CONF_DIR=CONF_DIR,
             FLINK_LOG_DIR=LOG_DIR, FLINK_PID_DIR=RUN_DIR)
  env.pop('FLINK_ENV_JAVA_OPTS', None)
  return env


def _commands() -> Dict[str, List[str]]:
  bin_dir = os.path.join(FLINK_HOME, 'bin')
  return {
      # start-foreground execs java, so the pid Popen returns is the JVM's.
      'jobmanager': [os.path.join(bin_dir, 'jobmanager.sh'), 'start-foreground'],
      'taskmanager': [os.path.join(bin_dir, 'taskmanager.sh'), 'start-foreground'],
      'job-server': ['java', f'-Djava.io.tmpdir={os.path.join(HOME, "tmp")}', '-jar', JAR,
                     '--flink-master', FLINK_MASTER, '--job-host', HOST,
                     '--job-port', str(JOB_PORT), '--artifact-port', str(ARTIFACT_PORT),
                     '--expansion-port', str(EXPANSION_PORT),
                     '--artifacts-dir', ARTIFACTS_DIR],
  }


def start(name: str) -> Optional[subprocess.Popen]:
  """Starts `name` unless it runs already; the new process, or None."""
  if running_pid(name) is not None:
    return None
  os.makedirs(RUN_DIR, exist_ok=True)
  os.makedirs(LOG_DIR, exist_ok=True)
  os.makedirs(os.path.join(HOME, 'tmp'), exist_ok=True)
  os.makedirs(ARTIFACTS_DIR, exist_ok=True)
  log = open(os.path.join(LOG_DIR, f'{name}.out'), 'ab')
  process = subprocess.Popen(_commands()[name], env=_env(), cwd=HOME, stdin=subprocess.DEVNULL,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
  log.close()
  with open(_pid_file(name), 'w') as f:
    f.write(f'{process.pid}\n')
  return process


def rest(path: str, timeout: float = 2.0):
  """GET a Flink REST resource as JSON."""
  with urllib.request.urlopen(REST_URL + path, timeout=timeout) as response:
    return json.loads(response.read())


def _accepts(port: int) -> bool:
  try:
    with socket.create_connection((HOST, port), timeout=1):
      return True
  except OSError:
    return False


def _free_slots() -> int:
  try:
    return int(rest('/overview').get('slots-total', 0))
  except (OSError, ValueError):
    return 0


def ready() -> bool:
  return _free_slots() >= SLOTS and _accepts(JOB_PORT)


def wait_ready(started: Dict[str, subprocess.Popen], timeout: float = 180.0) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if ready():
      return
    for name, process in started.items():
      if process.poll() is not None:
        sys.exit(f'flink: the {name} exited while starting; see '
                 f'{os.path.join(LOG_DIR, name + ".out")} and {LOG_DIR}/')
    time.sleep(0.5)
  sys.exit(f'flink: the cluster was not ready in {timeout:.0f} s (REST {REST_URL} with '
           f'{SLOTS} slots, job port {JOB_PORT}); see {LOG_DIR}/')


def _port_owner_is_foreign() -> Optional[int]:
  """A port the cluster needs that something other than this cluster holds."""
  if all(running_pid(name) is None for name in PROCESSES):
    for port in (REST_PORT, JOB_PORT, ARTIFACT_PORT, EXPANSION_PORT):
      if _accepts(port):
        return port
  return None


def up() -> None:
  began = time.time()
  ensure_jar()
  ensure_flink()
  if all(running_pid(n) is not None for n in PROCESSES) and ready():
    say(f'already up: REST {REST_URL}, job endpoint {JOB_ENDPOINT}')
    return
  port = _port_owner_is_foreign()
  if port is not None:
    sys.exit(f'flink: port {HOST}:{port} is taken by a process this script did not start; '
             'stop it, then run make flink-up again')
  write_config()
  started = {name: start(name) for name in PROCESSES}
  wait_ready({name: process for name, process in started.items() if process})
  say(f'up in {time.time() - began:.0f} s: REST {REST_URL} ({SLOTS} slots), job endpoint '
      f'{JOB_ENDPOINT}, jar {JAR}')


def stop(name: str, timeout: float = 20.0) -> None:
  pid = running_pid(name)
  if pid is not None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while running_pid(name) is not None and time.time() < deadline:
      time.sleep(0.2)
    if running_pid(name) is not None:
      os.kill(pid, signal.SIGKILL)
      while running_pid(name) is not None:
        time.sleep(0.1)
  try:
    os.unlink(_pid_file(name))
  except FileNotFoundError:
    pass


def down() -> None:
  for name in reversed(PROCESSES):
    stop(name)
  say('down')


def status() -> int:
  pids = {name: running_pid(name) for name in PROCESSES}
  print(json.dumps({'pids': pids, 'ready': ready(), 'rest': REST_URL,
                    'job_endpoint': JOB_ENDPOINT, 'jar': JAR}, indent=1))
  return 0 if all(pids.values()) else 1


if __name__ == '__main__':
  command = sys.argv[1] if len(sys.argv) > 1 else ''
  if command == 'up':
    up()
  elif command == 'down':
    down()
  elif command == 'status':
    sys.exit(status())
  else:
    sys.exit('usage: local_cluster.py up|down|status')
