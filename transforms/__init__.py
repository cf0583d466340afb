"""unrecord's library: pure modules for TFRecords and images, and the Beam transforms over them.

Pure modules (no Beam): errors, tfrecord, protos, tensor_proto, example, image_formats,
decode, normalize, schema, storage, preview. Beam transforms: read.
"""
