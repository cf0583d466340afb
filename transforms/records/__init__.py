"""A record's bytes to its features: the protobuf wire format and messages, Example,
TensorProto, `.npy` arrays and the kind of a record. Imports only the packages below it
(docs/architecture.md)."""
