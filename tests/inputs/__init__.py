"""Unit tests of transforms/inputs/."""
