"""unrecord's library: what a pipeline composes to turn TFRecords of images into files.

    import transforms as unrecord

    with unrecord.claim_root(request.output) as claim:
      plan = unrecord.plan_export(request)   # request = unrecord.Request(input=..., ...)
      claim.start(plan.identity)
      with beam.Pipeline() as p:
        p | unrecord.ExportImages(plan.config)

Names are imported when first used, so `import transforms` (or any Beam-free module of
it: inputs.tfrecord, images.decode, pixels.normalize, pixels.encode, ...) never imports
Beam; only `ptransforms` does. docs/architecture.md shows the packages, bottom up, and
which module owns what.
"""

import importlib

_EXPORTS = {
    # Planning: options plus a sample of the records -> the job's config.
    'Request': 'plan', 'Plan': 'plan', 'plan_export': 'plan',
    'ExportConfig': 'output.export_config', 'ReadConfig': 'inputs.record_ranges',
    'ImageSpec': 'images.decode', 'claim_root': 'output.root_claim',
    # Beam transforms.
    'ExportImages': 'ptransforms', 'PlanRanges': 'ptransforms',
    'ReadImageRecords': 'ptransforms', 'DecodeImages': 'ptransforms',
    # The same work without Beam.
    'export_range': 'export', 'RangeWorker': 'export', 'read_range': 'inputs.record_ranges',
    'plan_file': 'inputs.record_ranges', 'read_all': 'inputs.record_ranges',
    'decode_record': 'images.decode', 'DecodedImage': 'images.decode',
    'FileRange': 'inputs.tfrecord', 'RecordRef': 'inputs.tfrecord',
    # Errors and dead-letter rows.
    'UnrecordError': 'errors', 'ConfigError': 'errors', 'CorruptRecordError': 'errors',
    'DecodeError': 'errors', 'EncodeError': 'errors', 'NamingError': 'errors',
    'StorageFault': 'errors', 'RootBusyError': 'errors', 'Failure': 'errors',
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  module = _EXPORTS.get(name)
  if module is None:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  value = getattr(importlib.import_module(f'{__name__}.{module}'), name)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(__all__))
