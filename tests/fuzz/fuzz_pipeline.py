"""atheris fuzz target: bytes -> TFRecord framing -> Example decoding -> normalize -> encode.

A short run is part of `make test` (tests/test_atheris.py). Run it for hours with:

    .venv/bin/python tests/fuzz/fuzz_pipeline.py -max_total_time=36000 fuzz_corpus/

Any exception other than unrecord's typed errors is a bug, and atheris saves the input
that caused it as crash-<hash> in the working directory.
"""

import io
import sys

import atheris

with atheris.instrument_imports():
  from transforms import errors
  from transforms.images import decode
  from transforms.images import render
  from transforms.inputs import tfrecord
  from transforms.pixels import encode

_CONFIG = render.RenderConfig(encode=encode.EncodeSpec('png'))
_SPEC = decode.ImageSpec(max_pixels=1 << 16)


def TestOneInput(data: bytes) -> None:
  """Reads `data` as a TFRecord file and runs every intact record through the job path."""
  for slot in tfrecord.read_records(io.BytesIO(data), 'fuzz', size=len(data),
                                    max_record_size=1 << 20):
    if isinstance(slot, errors.CorruptRecordError):
      continue
    ref, payload = slot
    try:
      for image in decode.decode_record(ref, payload, _SPEC):
        render.render(image, _CONFIG)
    except errors.UnrecordError:
      pass


def main() -> None:
  atheris.Setup(sys.argv, TestOneInput)
  atheris.Fuzz()


if __name__ == '__main__':
  main()
