"""Features to images and images to bytes: decoding, the schema a sample shows, the
byte-layout fast path, rendering. Imports only the packages below it
(docs/architecture.md)."""
