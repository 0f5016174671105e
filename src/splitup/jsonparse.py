"""JSON from outside the process, parsed so that every way it can be wrong is a ``ValueError``.

``json.loads`` raises ValueError for text that is not JSON, not UTF-8 or holds an integer of more digits
than Python converts, but RecursionError for arrays or objects nested deeper than the interpreter's stack:
a handler that catches ValueError alone lets that one through as a crash or a 500. Callers turn the
ValueError into their own layer's typed error.
"""

from __future__ import annotations

import json
from typing import Any


def loads(data: str | bytes | bytearray, **options: Any) -> Any:
    """``json.loads(data, **options)``; nesting too deep for the parser is a ValueError too."""
    try:
        return json.loads(data, **options)
    except RecursionError:
        raise ValueError("JSON nested deeper than the parser can follow") from None
