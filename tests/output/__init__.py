"""Unit tests of transforms/output/."""
