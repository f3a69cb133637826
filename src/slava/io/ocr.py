"""Reading the words of a data bar with Tesseract OCR (Debian's ``tesseract-ocr`` through ``pytesseract``).

The band is turned to dark text on white (what Tesseract reads best) and
enlarged until its text is about 30 px high before it is read. When
Tesseract is missing, the first call warns once and every call returns no
words with the reason, so callers carry on without the text.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from slava.io.databar import dominant_value

# Tesseract reads bar text best enlarged twice (capitals ~25 px high on
# FEI/Zeiss bars of 60-80 px); three times breaks its sparse-text layout on
# FEI tables. Thin bands (synthetic, screen captures) get three.
UPSCALE = 2
THIN_BAND = 40
MIN_CONFIDENCE = 0

MISSING = "Tesseract OCR is not installed (apt-get install tesseract-ocr, or `make ocr`): the data-bar text was not read"

_warned = False


@dataclass(frozen=True)
class Word:
    """One word Tesseract read: its text, box (x0, y0, x1, y1) in image pixels, and line id."""

    text: str
    box: tuple[int, int, int, int]
    line: tuple[int, int, int]

    @property
    def cx(self) -> float:
        return 0.5 * (self.box[0] + self.box[2])

    @property
    def cy(self) -> float:
        return 0.5 * (self.box[1] + self.box[3])


def tesseract_problem() -> str | None:
    """Why OCR cannot run here (pytesseract or the tesseract program missing), or None when it can."""
    try:
        import pytesseract
    except ImportError:
        return MISSING
    try:
        pytesseract.get_tesseract_version()
    except (pytesseract.TesseractNotFoundError, OSError):
        return MISSING
    return None


def _warn_once(message: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def read_words(
    region: np.ndarray, offset: tuple[int, int] = (0, 0), psm: int = 11, scale: int | None = None
) -> tuple[list[Word], str | None]:
    """The words in ``region`` ([H, W] in [0, 1]) and any problem; boxes are shifted by ``offset`` (x, y).

    ``psm`` 11 is Tesseract's sparse-text mode: bar text is scattered
    fields, not paragraphs. ``scale`` overrides the enlargement.
    """
    problem = tesseract_problem()
    if problem is not None:
        _warn_once(problem)
        return [], problem
    import pytesseract
    from PIL import Image

    grey = np.asarray(region, dtype=np.float32)
    if grey.size == 0:
        return [], "empty data bar"
    if dominant_value(grey) < 0.5:
        grey = 1.0 - grey
    if scale is None:
        scale = UPSCALE + (1 if grey.shape[0] < THIN_BAND else 0)
    image = Image.fromarray((grey * 255).astype(np.uint8))
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    try:
        data = pytesseract.image_to_data(
            image, config=f"--psm {psm}", output_type=pytesseract.Output.DICT, timeout=30
        )
    except (RuntimeError, pytesseract.TesseractError, OSError) as exc:
        return [], f"Tesseract failed on the data bar ({exc})"
    words = []
    for i, text in enumerate(data["text"]):
        text = text.strip()
        if not text or float(data["conf"][i]) < MIN_CONFIDENCE:
            continue
        x, y = data["left"][i] / scale + offset[0], data["top"][i] / scale + offset[1]
        w, h = data["width"][i] / scale, data["height"][i] / scale
        line = (int(data["block_num"][i]), int(data["par_num"][i]), int(data["line_num"][i]))
        words.append(Word(text, (round(x), round(y), round(x + w), round(y + h)), line))
    return words, None
