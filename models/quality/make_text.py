#!/usr/bin/env python3
"""Writes models/quality/text.txt, the English text the quality measurements run over.

Three chapters of the Python Language Reference as CPython 3.11's standard library carries
them (`pydoc_data.topics`: "Execution model", "The import system", "Comparisons"), about
4,500 words of technical prose. Made once and committed, so every machine measures the same
bytes; rerun with Python 3.11.7 to check it:

    python3 models/quality/make_text.py && git diff --exit-code models/quality/text.txt

The text is © Python Software Foundation, under the PSF License Agreement (documentation is
distributed with CPython under it).
"""

import os
import sys

import pydoc_data.topics as t

CHAPTERS = ["execmodel", "import", "comparisons"]

if __name__ == "__main__":
    if sys.version_info[:2] != (3, 11):
        sys.exit("make_text.py: the committed text is Python 3.11's; run it with python3.11")
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "text.txt")
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n\n".join(t.topics[c].strip() for c in CHAPTERS) + "\n")
    print(f"wrote {out}")
