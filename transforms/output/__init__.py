"""Everything under the output root: names, atomic writes, the root's claim, sorted
runs, the manifest, dead letters, the report, verify. Imports only the packages below
it (docs/architecture.md)."""
