"""Unit tests of transforms/images/."""
