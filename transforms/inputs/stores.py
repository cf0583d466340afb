"""Reaching an object store: which endpoint a filesystem talks to, and why it cannot.

An unreachable store hides behind its client's retries (gcsfs: about 40 s of them, then
a traceback per attempt in the log), and its error names the cause badly (a failed DNS
lookup reads "Unknown error -2"). So at launch the endpoint is tried directly with a
short timeout, the whole check runs under a deadline, and `unreachable_cause` says in
words what failed: the host cannot be resolved, the connection is refused, no answer.

Beam-free and standard library only: clients are recognised by their protocol and their
exceptions by name, so nothing here imports gcsfs, s3fs, aiohttp or botocore.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
from typing import Callable, Iterator, Optional, Tuple, TypeVar

# What the user can change when a store cannot be reached.
WHAT_TO_CHECK = ('check the endpoint and the network (and the credentials), and '
                 '--storage_options')
# The clients' loggers: each retry of an unreachable store logs a traceback.
CLIENT_LOGGERS = ('gcsfs', 's3fs', 'aiobotocore', 'botocore', 'fsspec', 'adlfs')

T = TypeVar('T')


class Unreachable(Exception):
  """The store cannot be reached; the message is the cause, in words."""


def protocol_unknown(url: str, error: BaseException) -> Optional[str]:
  """What to say when `error`, raised making a filesystem for `url`, means no filesystem
  serves its protocol (fsspec knows none, or the package for it is missing); else None."""
  protocol = url.split('://', 1)[0] if '://' in url else url
  if isinstance(error, ValueError) and 'Protocol not known' in str(error):
    known = 'fsspec knows no such protocol'
  elif isinstance(error, ImportError):
    known = str(error) or 'its package is not installed'
  else:
    return None
  return (f'unknown protocol {protocol + "://"!r} ({known}); check the URL (gs://, '
          's3://, a local folder ...), or install the fsspec package for that store')


def endpoint_of(fs) -> Optional[Tuple[str, int, str]]:
  """(host, port, where it was set) of the one server `fs` sends every request to, or
  None when that is not known here (S3's default endpoint depends on region and bucket;
  an unknown client; a local filesystem)."""
  protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
  url, source = None, None
  if 'gs' in protocols or 'gcs' in protocols:
    url = getattr(fs, '_location', None)
    if getattr(fs, '_endpoint', None):
      source = 'endpoint_url'
    elif os.environ.get('STORAGE_EMULATOR_HOST', 'default') not in ('', 'default'):
      source = 'STORAGE_EMULATOR_HOST'
    else:
      source = 'the GCS default'
  elif 's3' in protocols or 's3a' in protocols:
    kwargs = getattr(fs, 'client_kwargs', None) or {}
    for url, source in ((getattr(fs, 'endpoint_url', None), 'endpoint_url'),
                        (kwargs.get('endpoint_url'), 'client_kwargs.endpoint_url'),
                        (os.environ.get('AWS_ENDPOINT_URL_S3'), 'AWS_ENDPOINT_URL_S3'),
                        (os.environ.get('AWS_ENDPOINT_URL'), 'AWS_ENDPOINT_URL')):
      if url:
        break
  if not isinstance(url, str) or not url:
    return None
  parsed = urllib.parse.urlsplit(url if '://' in url else f'http://{url}')
  if not parsed.hostname:
    return None
  try:
    port = parsed.port or (443 if parsed.scheme == 'https' else 80)
  except ValueError:
    return None
  return parsed.hostname, port, source


def _behind_proxy(host: str) -> bool:
  """Whether the client may reach `host` through an HTTP proxy (then a direct
  connection says nothing about it)."""
  proxies = urllib.request.getproxies_environment()
  if not any(k in proxies for k in ('http', 'https', 'all')):
    return False
  return not urllib.request.proxy_bypass_environment(host, proxies)


def try_endpoint(host: str, port: int, timeout: float, source: str = '') -> None:
  """Resolves `host` and connects to it; raises Unreachable saying what failed.
  `source`: where the endpoint was set, said with it."""
  where = f'{host}:{port}' + (f' (the endpoint, from {source})' if source else '')
  try:
    addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
  except socket.gaierror as e:
    named = f' (the endpoint, from {source})' if source else ''
    raise Unreachable(f'the host {host!r}{named} cannot be resolved (DNS: '
                      f'{e.strerror or e})') from e
  error: Optional[BaseException] = None
  for family, kind, proto, _, address in addresses:
    sock = socket.socket(family, kind, proto)
    sock.settimeout(timeout)
    try:
      sock.connect(address)
      return
    except OSError as e:
      error = e
    finally:
      sock.close()
  raise Unreachable(_connect_failure(where, error, timeout)) from error


def _connect_failure(where: str, error: Optional[BaseException], timeout: float) -> str:
  if isinstance(error, ConnectionRefusedError):
    return f'the connection to {where} was refused: nothing listens there'
  if isinstance(error, (socket.timeout, TimeoutError)):
    return f'no answer from {where} within {timeout:g} s (connecting timed out)'
  return f'cannot connect to {where} ({getattr(error, "strerror", None) or error})'


def unreachable_cause(error: BaseException) -> Optional[str]:
  """The cause, in words, when `error` (or an error it was raised from) says the store
  could not be reached at all; None for any other error (access denied, no bucket)."""
  seen = set()
  pending = [error]
  while pending:
    e = pending.pop(0)
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    if isinstance(e, Unreachable):
      return str(e)
    if isinstance(e, socket.gaierror):
      return f'a host name cannot be resolved (DNS: {e.strerror or e})'
    if isinstance(e, ConnectionRefusedError):
      return 'the connection was refused (nothing listens at the endpoint)'
    name = type(e).__name__
    if isinstance(e, (socket.timeout, TimeoutError)) or name in (
        'ConnectTimeoutError', 'ReadTimeoutError', 'ServerTimeoutError',
        'ConnectionTimeoutError', 'SocketTimeoutError'):
      return 'the connection timed out'
    if name in ('ServerDisconnectedError', 'ConnectionClosedError'):
      return f'the store closed the connection ({name}: {str(e)[:200]})'
    if name in ('EndpointConnectionError', 'ClientConnectorError',
                'ClientConnectorDNSError', 'NewConnectionError'):
      text = str(e)
      if 'Name or service not known' in text or 'nodename nor servname' in text or \
          'Temporary failure in name resolution' in text:
        return f'a host name cannot be resolved (DNS: {text[:200]})'
      if 'refused' in text.lower() or 'Connect call failed' in text:
        return f'the connection was refused ({text[:200]})'
      return f'cannot connect to the store ({name}: {text[:200]})'
    pending += [e.__cause__, e.__context__, getattr(e, 'os_error', None)]
    kwargs = getattr(e, 'kwargs', None)
    if isinstance(kwargs, dict) and isinstance(kwargs.get('error'), BaseException):
      pending.append(kwargs['error'])  # botocore keeps the urllib3 error here
  return None


def within(seconds: float, call: Callable[[], T], what: str) -> T:
  """`call()`'s result or error, or Unreachable if it has not returned in `seconds`.

  The call runs in a daemon thread, so a client stuck on a silent socket is left
  behind, not waited for.
  """
  outcome = {}

  def run():
    try:
      outcome['value'] = call()
    except BaseException as e:  # pylint: disable=broad-except  (handed to the caller)
      outcome['error'] = e

  worker = threading.Thread(target=run, name='unrecord-store-check', daemon=True)
  worker.start()
  worker.join(seconds)
  if worker.is_alive():
    raise Unreachable(f'no answer from {what} within {seconds:g} s')
  if 'error' in outcome:
    raise outcome['error']
  return outcome['value']


def check_reachable(fs, timeout: float) -> None:
  """Connects to `fs`'s endpoint, when it is known and not behind a proxy; raises
  Unreachable saying what failed."""
  endpoint = endpoint_of(fs)
  if endpoint is None:
    return
  host, port, source = endpoint
  if not _behind_proxy(host):
    try_endpoint(host, port, timeout, source)


@contextlib.contextmanager
def quiet_clients() -> Iterator[None]:
  """While a check runs: the clients' per-retry tracebacks stay off the terminal (the
  check says in one line what failed)."""
  loggers = [logging.getLogger(name) for name in CLIENT_LOGGERS]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(logging.CRITICAL + 1)
  try:
    yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)
