"""JSON from outside (event data, API bodies), parsed so that no shape of it can hurt later.

Python's parser accepts what later code cannot take: nesting deep enough that any recursive
walk (a schema validator, a serialiser) raises RecursionError, `NaN` and `Infinity`, and lone
surrogates ("\\ud800") that no UTF-8 encoder (a database driver) will write. All of them are
refused here as `BadJson`, which the HTTP layers map to 400.
"""

from __future__ import annotations

import json
import math
from typing import Any

# Deeper than any document of ours (an event's data is four levels deep), far below what
# would exhaust the interpreter's recursion limit in a validator.
MAX_DEPTH = 32


class BadJson(ValueError):
    """Not JSON, or JSON that no part of the service accepts; says why in one sentence."""


def loads(text: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise BadJson(f"the JSON is nested more than {max_depth} levels deep") from None
    except BadJson:
        raise
    except UnicodeDecodeError:
        raise BadJson("the JSON is not UTF-8 text") from None
    except ValueError as e:
        raise BadJson(f"not valid JSON: {str(e).splitlines()[0][:200]}") from None
    check(value, max_depth)
    return value


def check(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a parsed value nested deeper than `max_depth`, with non-finite numbers or with
    text that is not valid Unicode. Iterative, so depth itself cannot make it fail."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise BadJson(f"the JSON is nested more than {max_depth} levels deep")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
        elif isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                raise BadJson("the JSON holds text that is not valid Unicode") from None
        elif isinstance(item, float) and not math.isfinite(item):
            raise BadJson("the JSON holds a number that is not finite")


def _refuse_constant(name: str) -> Any:
    raise BadJson(f"{name} is not a JSON number")
