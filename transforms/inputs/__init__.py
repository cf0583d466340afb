"""Input files to raw records: object stores, input patterns, TFRecord framing, record
ranges. Imports only `transforms.errors`, `transforms.progress` and the packages below
it (docs/architecture.md)."""
