"""docs/architecture.md's rules, checked: one module of Beam, and imports that only point
down the layers the page lists (so a module can be read, tested and changed without the
ones above it)."""

import ast
import os

from tests.conftest import REPO

# Bottom up; a module may import (at module level) only modules of lower layers.
LAYERS = [
    ['errors', 'wire', 'protos', 'stores', 'checksums'],
    ['tfrecord', 'input_files', 'isolation', 'image_formats', 'normalize', 'encode',
     'naming', 'progress', 'preview'],
    ['tensor_proto', 'output_root'],
    ['npy', 'example', 'root_claim', 'incremental', 'runs', 'shards'],
    ['records', 'portability'],
    ['decode', 'read'],
    ['record_layout', 'schema', 'render'],
    ['manifest'],
    ['dead_letter', 'report', 'verify'],
    ['export'],
    ['plan'],
    ['ptransforms'],
]
LIBRARY = os.path.join(REPO, 'transforms')


def _imports(module: str, *, top_level: bool):
  """(transforms modules, other top-level packages) that `module` imports."""
  with open(os.path.join(LIBRARY, f'{module}.py'), encoding='utf-8') as f:
    tree = ast.parse(f.read())
  nodes = tree.body if top_level else list(ast.walk(tree))
  ours, others = set(), set()
  for node in nodes:
    if isinstance(node, ast.ImportFrom) and node.module == 'transforms':
      ours.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      if node.module.startswith('transforms.'):
        ours.add(node.module.split('.')[1])
      else:
        others.add(node.module.split('.')[0])
    elif isinstance(node, ast.Import):
      others.update(alias.name.split('.')[0] for alias in node.names)
  return ours, others


def test_every_library_module_is_in_a_layer():
  modules = {name[:-3] for name in os.listdir(LIBRARY)
             if name.endswith('.py') and name != '__init__.py'}
  assert modules == {m for layer in LAYERS for m in layer}


def test_imports_only_point_down():
  layer_of = {m: i for i, layer in enumerate(LAYERS) for m in layer}
  upward = [(module, imported) for module in layer_of
            for imported in _imports(module, top_level=True)[0]
            if layer_of[imported] >= layer_of[module]]
  assert not upward, f'imports at or above their own layer: {upward}'


def test_only_ptransforms_imports_beam_anywhere_in_the_library():
  importers = sorted(m for layer in LAYERS for m in layer
                     if 'apache_beam' in _imports(m, top_level=False)[1])
  assert importers == ['ptransforms']
