"""Files the page needs that ship inside installed packages, so the demo fetches nothing from the network:
the page's own HTML/JS/CSS (package data of this package), plotly.js (inside the `plotly` Python package) and the
NanumGothic web font (inside `koreanize-matplotlib`, found the way the PNG plots find it).

The font file cannot be served as it is: it carries an empty `TSI3` table (source tables of Microsoft's VTT hinting
tool, unused for rendering), and Chromium's font sanitizer (OTS) then refuses the whole font ("OTS parsing error:
TSI3: zero-length table"), which leaves Hangul as empty boxes. `web_font()` drops those tables with fontTools
(a dependency of matplotlib) and keeps every glyph."""

from __future__ import annotations

import functools
import io
from importlib import resources
from pathlib import Path

STATIC_DIR = Path(__file__).with_name("static")


def plotly_js_path() -> Path:
    """`plotly.min.js` of the installed `plotly` package (the same file `plotly.offline` embeds in HTML)."""
    try:
        path = Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            "The demo draws its charts with plotly.js, which ships inside the `plotly` Python package: "
            "pip install plotly (see setup.cfg for the pinned version)."
        )
    return path


def korean_font_path() -> Path | None:
    """NanumGothic.ttf, or None when koreanize-matplotlib is missing (then the browser's own fonts are used)."""
    from keras_transformer.plotting import korean_font_path as find_font

    path = find_font()
    return Path(path) if path else None


# Tables of VTT's hinting sources: never used to draw glyphs; Chromium rejects the font over the empty TSI3.
VTT_SOURCE_TABLES = ("TSI0", "TSI1", "TSI2", "TSI3", "TSI5")


@functools.lru_cache(maxsize=1)
def web_font() -> bytes | None:
    """NanumGothic as TrueType bytes a browser accepts (see the module docstring), or None without the font.
    Takes about a second, so it is computed once, on the first request for it."""
    from fontTools.ttLib import TTFont

    path = korean_font_path()
    if path is None:
        return None
    font = TTFont(path)
    for tag in VTT_SOURCE_TABLES:
        if tag in font:
            del font[tag]
    out = io.BytesIO()
    font.save(out)
    return out.getvalue()
