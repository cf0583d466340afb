"""unrecord's library: pure modules for TFRecords and images, and Beam transforms over them.

Pure modules (no Beam): errors, tfrecord, protos, tensor_proto, example, image_formats,
decode, schema, normalize, encode, naming, render, sink, storage, manifest, preview.
Beam transforms: read (PlanRanges, ReadImageRecords, DecodeImages), export (ExportImages).
"""
