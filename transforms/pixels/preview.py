"""Contact sheets: a captioned grid of images as one PNG, for eyes rather than programs."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL = 128
CAPTION = 14
PAD = 4
_BACKGROUND = (32, 32, 32)
_TEXT = (235, 235, 235)


def thumbnail(pixels: np.ndarray, size: int = CELL) -> Image.Image:
  """An 8-bit gray/RGB/RGBA array fitted into a size x size box, kept in proportion."""
  if pixels.ndim == 3 and pixels.shape[2] == 2:
    pixels = pixels[:, :, 0]  # gray + alpha: show the gray
  image = Image.fromarray(np.ascontiguousarray(pixels)).convert('RGB')
  image.thumbnail((size, size), Image.Resampling.LANCZOS if max(image.size) > size
                  else Image.Resampling.NEAREST)
  if max(image.size) < size // 2:  # tiny images (e.g. 28x28) are enlarged to be seen
    scale = max(1, size // max(image.size))
    image = image.resize((image.width * scale, image.height * scale),
                         Image.Resampling.NEAREST)
  return image


def contact_sheet(items: Sequence[Tuple[np.ndarray, str]], columns: Optional[int] = None,
                  cell: int = CELL) -> Image.Image:
  """A grid of (8-bit pixels, caption) items; captions are cut to fit their cell."""
  count = max(len(items), 1)
  columns = columns or min(8, count)
  rows = (count + columns - 1) // columns
  width = columns * (cell + PAD) + PAD
  height = rows * (cell + CAPTION + PAD) + PAD
  sheet = Image.new('RGB', (width, height), _BACKGROUND)
  draw = ImageDraw.Draw(sheet)
  font = ImageFont.load_default()
  for i, (pixels, caption) in enumerate(items):
    x = PAD + (i % columns) * (cell + PAD)
    y = PAD + (i // columns) * (cell + CAPTION + PAD)
    thumb = thumbnail(pixels, cell)
    sheet.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
    text = caption
    while text and draw.textlength(text, font=font) > cell:
      text = text[:-2] + '…' if len(text) > 2 else ''
    draw.text((x, y + cell + 1), text, fill=_TEXT, font=font)
  return sheet
