"""Project-owned definitions of tf.train.Example and TensorProto, wire-compatible with TF.

Built as descriptors in a private pool with the protobuf runtime: no protoc step, no
TensorFlow import, and no clash with TensorFlow's own registrations when both are loaded.
Field numbers follow tensorflow/core/example/feature.proto, example.proto (Example,
SequenceExample) and tensorflow/core/framework/tensor.proto, tensor_shape.proto.
"""

from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory

_F = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED


def _field(message, name, number, kind, label=_OPTIONAL, type_name=None,
           packed=None, oneof=None):
  field = message.field.add(name=name, number=number, type=kind, label=label)
  if type_name:
    field.type_name = type_name
  if packed is not None:
    field.options.packed = packed
  if oneof is not None:
    field.oneof_index = oneof
  return field


def _map_entry(message, entry_name, value_type):
  entry = message.nested_type.add(name=entry_name)
  entry.options.map_entry = True
  _field(entry, 'key', 1, _F.TYPE_STRING)
  _field(entry, 'value', 2, _F.TYPE_MESSAGE, type_name=value_type)
  return entry


def _example_file() -> descriptor_pb2.FileDescriptorProto:
  f = descriptor_pb2.FileDescriptorProto(
      name='unrecord/example.proto', package='unrecord.tf', syntax='proto3')
  bytes_list = f.message_type.add(name='BytesList')
  _field(bytes_list, 'value', 1, _F.TYPE_BYTES, _REPEATED)
  float_list = f.message_type.add(name='FloatList')
  _field(float_list, 'value', 1, _F.TYPE_FLOAT, _REPEATED, packed=True)
  int64_list = f.message_type.add(name='Int64List')
  _field(int64_list, 'value', 1, _F.TYPE_INT64, _REPEATED, packed=True)

  feature = f.message_type.add(name='Feature')
  feature.oneof_decl.add(name='kind')
  _field(feature, 'bytes_list', 1, _F.TYPE_MESSAGE, type_name='.unrecord.tf.BytesList',
         oneof=0)
  _field(feature, 'float_list', 2, _F.TYPE_MESSAGE, type_name='.unrecord.tf.FloatList',
         oneof=0)
  _field(feature, 'int64_list', 3, _F.TYPE_MESSAGE, type_name='.unrecord.tf.Int64List',
         oneof=0)

  features = f.message_type.add(name='Features')
  _map_entry(features, 'FeatureEntry', '.unrecord.tf.Feature')
  _field(features, 'feature', 1, _F.TYPE_MESSAGE, _REPEATED,
         type_name='.unrecord.tf.Features.FeatureEntry')

  example = f.message_type.add(name='Example')
  _field(example, 'features', 1, _F.TYPE_MESSAGE, type_name='.unrecord.tf.Features')

  feature_list = f.message_type.add(name='FeatureList')
  _field(feature_list, 'feature', 1, _F.TYPE_MESSAGE, _REPEATED,
         type_name='.unrecord.tf.Feature')
  feature_lists = f.message_type.add(name='FeatureLists')
  _map_entry(feature_lists, 'FeatureListEntry', '.unrecord.tf.FeatureList')
  _field(feature_lists, 'feature_list', 1, _F.TYPE_MESSAGE, _REPEATED,
         type_name='.unrecord.tf.FeatureLists.FeatureListEntry')
  sequence_example = f.message_type.add(name='SequenceExample')
  _field(sequence_example, 'context', 1, _F.TYPE_MESSAGE,
         type_name='.unrecord.tf.Features')
  _field(sequence_example, 'feature_lists', 2, _F.TYPE_MESSAGE,
         type_name='.unrecord.tf.FeatureLists')
  return f


def _tensor_file() -> descriptor_pb2.FileDescriptorProto:
  f = descriptor_pb2.FileDescriptorProto(
      name='unrecord/tensor.proto', package='unrecord.tf', syntax='proto3')
  shape = f.message_type.add(name='TensorShapeProto')
  dim = shape.nested_type.add(name='Dim')
  _field(dim, 'size', 1, _F.TYPE_INT64)
  _field(dim, 'name', 2, _F.TYPE_STRING)
  _field(shape, 'dim', 2, _F.TYPE_MESSAGE, _REPEATED,
         type_name='.unrecord.tf.TensorShapeProto.Dim')
  _field(shape, 'unknown_rank', 3, _F.TYPE_BOOL)

  tensor = f.message_type.add(name='TensorProto')
  # `dtype` is TF's DataType enum; an int32 has the same wire form.
  _field(tensor, 'dtype', 1, _F.TYPE_INT32)
  _field(tensor, 'tensor_shape', 2, _F.TYPE_MESSAGE,
         type_name='.unrecord.tf.TensorShapeProto')
  _field(tensor, 'version_number', 3, _F.TYPE_INT32)
  _field(tensor, 'tensor_content', 4, _F.TYPE_BYTES)
  _field(tensor, 'float_val', 5, _F.TYPE_FLOAT, _REPEATED, packed=True)
  _field(tensor, 'double_val', 6, _F.TYPE_DOUBLE, _REPEATED, packed=True)
  _field(tensor, 'int_val', 7, _F.TYPE_INT32, _REPEATED, packed=True)
  _field(tensor, 'string_val', 8, _F.TYPE_BYTES, _REPEATED)
  _field(tensor, 'scomplex_val', 9, _F.TYPE_FLOAT, _REPEATED, packed=True)
  _field(tensor, 'int64_val', 10, _F.TYPE_INT64, _REPEATED, packed=True)
  _field(tensor, 'bool_val', 11, _F.TYPE_BOOL, _REPEATED, packed=True)
  _field(tensor, 'dcomplex_val', 12, _F.TYPE_DOUBLE, _REPEATED, packed=True)
  _field(tensor, 'half_val', 13, _F.TYPE_INT32, _REPEATED, packed=True)
  _field(tensor, 'uint32_val', 16, _F.TYPE_UINT32, _REPEATED, packed=True)
  _field(tensor, 'uint64_val', 17, _F.TYPE_UINT64, _REPEATED, packed=True)
  return f


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_example_file())
_POOL.Add(_tensor_file())


def _message(name):
  return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(name))


Example = _message('unrecord.tf.Example')
SequenceExample = _message('unrecord.tf.SequenceExample')
Features = _message('unrecord.tf.Features')
Feature = _message('unrecord.tf.Feature')
BytesList = _message('unrecord.tf.BytesList')
FloatList = _message('unrecord.tf.FloatList')
Int64List = _message('unrecord.tf.Int64List')
TensorProto = _message('unrecord.tf.TensorProto')
TensorShapeProto = _message('unrecord.tf.TensorShapeProto')
