"""Keeps Google Cloud's client libraries out of a local run's processes.

`import apache_beam` imports every runner and IO it ships, the Dataflow runner among
them and, where Beam's gcp extra is installed, Google Cloud's clients: Dataflow's,
Storage's (the largest single import of the launcher), BigQuery's, Pub/Sub's,
apitools. A local run uses none of them (unrecord reads and writes stores with fsspec),
and they cost the launcher and the warm pool's importer each a few tenths of a second
(docs/benchmarks.md, "Fixed costs of a small run").

`held_back()` makes them unimportable while Beam is imported: Beam already runs without
them (each import is guarded by `except ImportError`, as for an install without the gcp
extra), except the Dataflow runner package, which `apache_beam.runners` imports
unguarded: that is stood in for by a stub whose `DataflowRunner` imports the real one
when made. When the block ends, nothing is held any more: a later import of any of
these modules (gcsfs's google.auth for a gs:// root, say) loads the real one.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import sys
from typing import Iterator, Optional, Sequence

# Packages not imported under held_back() (each with its submodules).
HELD = ('google.cloud', 'google.api_core', 'google.auth', 'google.oauth2', 'apitools',
        'googleapiclient', 'google_auth_httplib2', 'apache_beam.io.gcp',
        'apache_beam.internal.gcp')
# The Dataflow runner's modules, which `apache_beam.runners` imports unguarded: stubs.
STUBBED = ('apache_beam.runners.dataflow', 'apache_beam.runners.dataflow.dataflow_runner',
           'apache_beam.runners.dataflow.test_dataflow_runner')
_RUNNERS = {'DataflowRunner': 'apache_beam.runners.dataflow.dataflow_runner',
            'TestDataflowRunner': 'apache_beam.runners.dataflow.test_dataflow_runner'}
_STUB = '__unrecord_stub__'


def _deferred(name: str, module: str) -> type:
  """A stand-in for the runner class `name`: making one makes the real one."""
  def new(cls, *args, **kwargs):  # pylint: disable=unused-argument
    return getattr(importlib.import_module(module), name)(*args, **kwargs)
  return type(name, (), {'__new__': new, '__module__': module,
                         '__doc__': f'Stands in for {module}.{name}; makes the real one.'})


class _StubLoader(importlib.abc.Loader):

  def create_module(self, spec):
    return None  # the default module

  def exec_module(self, module):
    setattr(module, _STUB, True)
    for name, where in _RUNNERS.items():
      if module.__name__ in (where, STUBBED[0]):
        setattr(module, name, _deferred(name, where))


class _Holder(importlib.abc.MetaPathFinder):

  def find_spec(self, fullname: str, path: Optional[Sequence[str]], target=None):
    if fullname in STUBBED:
      return importlib.machinery.ModuleSpec(fullname, _StubLoader(),
                                            is_package=fullname == STUBBED[0])
    if any(fullname == p or fullname.startswith(p + '.') for p in HELD):
      raise ModuleNotFoundError(f'No module named {fullname!r} (held back on a local run)',
                                name=fullname)
    return None


@contextlib.contextmanager
def held_back() -> Iterator[None]:
  """Within the block, HELD modules cannot be imported and STUBBED ones are stubs."""
  holder = _Holder()
  sys.meta_path.insert(0, holder)
  try:
    yield
  finally:
    sys.meta_path.remove(holder)
    for name in STUBBED:
      if getattr(sys.modules.get(name), _STUB, False):
        del sys.modules[name]  # the next import of it loads the real module


def loaded(modules: Optional[Sequence[str]] = None) -> list:
  """The HELD and STUBBED-for-real modules this process has imported (for the tests)."""
  names = sys.modules if modules is None else modules
  return sorted(n for n in names
                if any(n == p or n.startswith(p + '.') for p in HELD + STUBBED[:1]))
