"""Unit tests of transforms/records/."""
