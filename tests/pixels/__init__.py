"""Unit tests of transforms/pixels/."""
