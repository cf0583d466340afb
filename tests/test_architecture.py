"""docs/architecture.md's rules, checked: the library's packages follow a record, each
importing only the ones below it, and only `ptransforms` imports Beam.

Every import counts: at module level, inside functions and under `TYPE_CHECKING`
(a type-only import is still a tie a reader has to follow), so a package can be read,
tested and changed without the ones above it.
"""

import ast
import os
import re
from typing import Dict, List, Set, Tuple

from tests.conftest import REPO

# Bottom up: a unit is a package of transforms/ or one of its top-level modules. A module
# may import its own unit's modules (listed before it in docs/architecture.md) and any
# module of a unit below its own, never one above.
ORDER = ['errors', 'progress', 'pixels', 'inputs', 'records', 'images', 'output',
         'export', 'plan', 'ptransforms']
LIBRARY = os.path.join(REPO, 'transforms')
ARCHITECTURE = os.path.join(REPO, 'docs', 'architecture.md')


def _modules(library: str) -> Dict[str, str]:
  """Dotted name -> file, for every module under `library` (a folder named transforms)."""
  top = os.path.basename(library)
  found = {}
  for folder, _, files in os.walk(library):
    for name in files:
      if name.endswith('.py'):
        parts = [top] + os.path.relpath(os.path.join(folder, name), library)[:-3].split(os.sep)
        if parts[-1] == '__init__':
          parts.pop()
        found['.'.join(parts)] = os.path.join(folder, name)
  return found


def _imports(module: str, path: str, modules: Dict[str, str]) -> Tuple[Set[str], Set[str]]:
  """(library modules, other top-level packages) that `module` imports, anywhere in it."""
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read())
  top = module.split('.')[0]
  ours, others = set(), set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:  # relative: from the module's own package, up `level - 1` more
        package = module.split('.')[:-node.level] if not path.endswith('__init__.py') else (
            module.split('.')[:len(module.split('.')) - node.level + 1])
        base = '.'.join(package + ([base] if base else []))
      if base != top and not base.startswith(top + '.'):
        others.add(base.split('.')[0])
        continue
      for alias in node.names:  # `from pkg import module` names a module; else pkg's own
        ours.add(f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base)
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.split('.')[0] == top:
          ours.add(alias.name)
        else:
          others.add(alias.name.split('.')[0])
  ours.discard(module)
  return ours, others


def _unit(module: str) -> str:
  return module.split('.')[1] if '.' in module else ''


def upward_imports(library: str, order: List[str]) -> List[Tuple[str, str]]:
  """(module, imported) pairs where the imported module's unit is above the module's."""
  modules = _modules(library)
  rank = {unit: i for i, unit in enumerate(order)}
  return sorted((module, imported) for module, path in modules.items() if _unit(module)
                for imported in _imports(module, path, modules)[0]
                if _unit(imported) and rank[_unit(imported)] > rank[_unit(module)])


def out_of_order(library: str, listed: Dict[str, List[str]]) -> List[Tuple[str, str]]:
  """(module, imported) pairs of one package where `imported` is not listed before
  `module` in `listed` (package -> its modules, bottom up): an import cycle inside a
  package always makes one."""
  modules = _modules(library)
  top = os.path.basename(library)
  wrong = []
  for package, names in listed.items():
    for i, name in enumerate(names):
      module = f'{top}.{package}.{name}'
      for imported in _imports(module, modules[module], modules)[0]:
        if imported.startswith(f'{top}.{package}.') and imported.split('.')[-1] not in names[:i]:
          wrong.append((module, imported))
  return sorted(wrong)


def _drawn() -> Tuple[List[str], Dict[str, List[str]]]:
  """docs/architecture.md's units, bottom up, and each package's modules, bottom up."""
  with open(ARCHITECTURE, encoding='utf-8') as f:
    text = f.read()
  table = re.search(r'## The packages\n.*?\n\n(\|.*?)\n\n', text, re.S).group(1)
  units = [re.match(r'\| `transforms/(\w+)(?:/|\.py)`', row).group(1)
           for row in table.splitlines()[2:]]
  packages = {}
  for package, body in re.findall(r'\n### `transforms/(\w+)/`\n(.*?)(?=\n### |\n## |\Z)', text,
                                  re.S):
    rows = [row for row in body.splitlines() if row.startswith('| `')]
    packages[package] = [re.match(r'\| `(\w+)`', row).group(1) for row in rows][::-1]
  return units[::-1], packages


def _package_modules(library: str) -> Dict[str, Set[str]]:
  return {name: {f[:-3] for f in os.listdir(os.path.join(library, name))
                 if f.endswith('.py') and f != '__init__.py'}
          for name in os.listdir(library) if os.path.isdir(os.path.join(library, name))
          and os.path.exists(os.path.join(library, name, '__init__.py'))}


def test_every_unit_of_the_library_is_in_the_order_the_page_draws():
  units = {name[:-3] for name in os.listdir(LIBRARY)
           if name.endswith('.py') and name != '__init__.py'} | set(_package_modules(LIBRARY))
  assert set(ORDER) == units
  drawn, packages = _drawn()
  assert drawn == ORDER
  assert {name: set(listed) for name, listed in packages.items()} == _package_modules(LIBRARY)


def test_no_module_imports_a_unit_above_its_own():
  assert upward_imports(LIBRARY, ORDER) == []


def test_a_package_s_modules_import_only_those_drawn_below_them():
  assert out_of_order(LIBRARY, _drawn()[1]) == []


def _library(tmp_path, files: Dict[str, str]) -> str:
  library = tmp_path / 'transforms'
  for name, text in {'__init__.py': '', 'errors.py': '', 'low/__init__.py': '',
                     'high/__init__.py': '', **files}.items():
    (library / name).parent.mkdir(parents=True, exist_ok=True)
    (library / name).write_text(text)
  return str(library)


def test_the_rules_catch_upward_imports_wherever_they_hide(tmp_path):
  library = _library(tmp_path, {
      'high/top.py': 'from transforms.low import base\n',
      'low/base.py': 'from transforms import errors\n',
      'low/typed.py': ('from typing import TYPE_CHECKING\n'
                       'if TYPE_CHECKING:\n  from transforms.high import top\n'),
      'low/late.py': 'def f():\n  from transforms.high.top import g\n',
      'low/plain.py': 'import transforms.high.top\n',
      'low/relative.py': 'from ..high import top\n',
  })
  order = ['errors', 'low', 'high']
  assert upward_imports(library, order) == [
      ('transforms.low.late', 'transforms.high.top'),
      ('transforms.low.plain', 'transforms.high.top'),
      ('transforms.low.relative', 'transforms.high.top'),
      ('transforms.low.typed', 'transforms.high.top')]
  assert upward_imports(library, ['errors', 'high', 'low']) == [
      ('transforms.high.top', 'transforms.low.base')]


def test_the_rules_catch_a_cycle_inside_a_package(tmp_path):
  library = _library(tmp_path, {
      'low/a.py': 'from transforms.low import b\n',
      'low/b.py': 'def f():\n  from transforms.low import a\n',
  })
  assert out_of_order(library, {'low': ['a', 'b']}) == [('transforms.low.a', 'transforms.low.b')]
  assert out_of_order(library, {'low': ['b', 'a']}) == [('transforms.low.b', 'transforms.low.a')]


def test_only_ptransforms_imports_beam_anywhere_in_the_library():
  modules = _modules(LIBRARY)
  importers = sorted(module for module, path in modules.items()
                     if 'apache_beam' in _imports(module, path, modules)[1])
  assert importers == ['transforms.ptransforms']
