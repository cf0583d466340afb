"""Flex Template entry point: the launcher runs this with the template's parameters.

Flex Templates pass every parameter as --name=value; unrecord's on/off flags take no value,
so 'true' becomes the bare flag and 'false' drops it. The launcher submits and exits
(--no_wait): Dataflow, not the launcher, tracks the job.
"""

import sys

from beam_jobs import export_images

FLAGS = ('skip_existing', 'incremental', 'webp_lossless', 'jpeg_progressive', 'reencode',
         'quiet', 'no_wait', 'portable_names')


def template_argv(argv):
  """Template parameters -> the job's command line."""
  result = []
  for arg in argv:
    name, _, value = arg.partition('=')
    if name.lstrip('-') in FLAGS and value:
      if value.lower() in ('true', '1', 'yes'):
        result.append(name)
      continue
    result.append(arg)
  if '--no_wait' not in result:
    result.append('--no_wait')
  return result


if __name__ == '__main__':
  sys.exit(export_images.main(template_argv(sys.argv[1:])))
