"""transforms/output/portability.py: counting non-portable names over sorted runs, a fold-key
range per task, with the same result however the names are cut into runs and ranges."""

from transforms.output import portability
from transforms.output import root_files


def _count(tmp_path, names, per_run, range_rows, slice_rows):
  root = root_files.OutputRoot(str(tmp_path))
  runs = []
  for start in range(0, len(names), per_run):
    writer = portability.FoldWriter(root)
    writer.add(names[start:start + per_run])
    runs += writer.flush()
  ranges = portability.plan_ranges(runs, range_rows)
  return portability.combine([portability.check_range(r, runs, root, slice_rows)
                              for r in ranges]), len(ranges)


def test_counts_do_not_depend_on_how_the_work_is_cut(tmp_path):
  names = [f'img-{i:05d}.png' for i in range(3000)]
  names += ['Img-00007.png', 'IMG-00007.png', 'Cat/1.png', 'cat/1.png', 'CON.png',
            'aux.png.png', 'a./b.png']
  whole, _ = _count(tmp_path / 'a', names, len(names), 10 ** 6, 10 ** 6)
  cut, ranges = _count(tmp_path / 'b', names[::-1], 97, 400, 50)
  assert ranges > 1
  assert whole == cut
  assert (whole['names'], whole['reserved'], whole['trailing'], whole['case_groups'],
          whole['case_names'], whole['not_portable']) == (3007, 2, 1, 2, 5, 8)
  assert whole['examples']['case'] == [['Cat/1.png', 'cat/1.png'],
                                       ['IMG-00007.png', 'Img-00007.png', 'img-00007.png']]
  line = portability.describe(whole)
  assert line.startswith('8 names are not portable: 2 reserved on Windows (aux.png.png, '
                         'CON.png), 1 end in a dot or space (a./b.png), 2 groups of 5 names')


def test_no_names_no_ranges_and_no_warning(tmp_path):
  assert portability.plan_ranges([]) == []
  assert portability.describe(portability.combine([])) is None


def test_the_column_checks_mean_what_the_naming_rules_say():
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  from transforms.output import naming  # pylint: disable=import-outside-toplevel
  names = ['CON.png', 'con', 'x/Nul.tar.gz', 'COM\u00b9.png', 'lpt\u00b3/x.png', 'COM10.png',
           'CON .png', 'a./x.png', 'b /x.png', 'x:y.png', 'a\x01.png', 'x\\y', 'console.png',
           'nulx/aux', 'Straße.png', 'e\u0301/\u00c9.png', 'd/' + 'q' * 199,
           'd/' + '\U0001f600' * 100, 'ok/img.png']
  masks = portability.problem_masks(pa.array(names))
  for i, name in enumerate(names):
    assert [p for p in naming.PORTABILITY_PROBLEMS if masks[p][i]] == \
        naming.windows_problems(name), name
  assert portability.folds(names) == [naming.fold(n) for n in names]
