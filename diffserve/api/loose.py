"""Loose vendor field types: what real ModelsLab/Qolaba clients send, coerced strictly.

    "31", 31, 31.0           -> 31          (LooseInt; "31.5", true, NaN are errors)
    "7.5", 7.5, 7            -> 7.5         (LooseFloat; NaN/Infinity are errors)
    "yes"/"no", true/false, "true"/"false", 1/0, "1"/"0" -> bool   (LooseBool)
    null or ""               -> None        (absent: the default applies)

and `unset_word` for a choice (scheduler, vae...) that clients leave to the server with a word:
    "none", "no", "null", "default", ""  -> None   (the v6 page's default "none", its meta's "no",
                                                    JSON's null as text, the realtime setting's "default")
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

_TRUE = {"yes", "true", "1", "on", "y"}
_FALSE = {"no", "false", "0", "off", "n", "none"}
UNSET_WORDS = frozenset({"", "none", "no", "null", "default"})  # a choice left to the server (unset_word)


def unset_word(value: str | None) -> str | None:
    """A choice as sent, stripped; None when it is absent or one of UNSET_WORDS (any case)."""
    if value is None or value.strip().lower() in UNSET_WORDS:
        return None
    return value.strip()


def _absent(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip() == "")


def _to_int(v: Any) -> int | None:
    if _absent(v):
        return None
    if isinstance(v, bool):
        raise PydanticCustomError("loose_int", "must be an integer")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        s = v.strip()
        try:
            return int(s)
        except ValueError:
            try:
                f = float(s)
            except ValueError:
                f = math.nan
            if math.isfinite(f) and f.is_integer() and abs(f) < 2**63:
                return int(f)
    raise PydanticCustomError("loose_int", "must be an integer")


def _to_float(v: Any) -> float | None:
    if _absent(v):
        return None
    if isinstance(v, bool):
        raise PydanticCustomError("loose_float", "must be a number")
    if isinstance(v, (int, float)):
        f = float(v)
    elif isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            raise PydanticCustomError("loose_float", "must be a number") from None
    else:
        raise PydanticCustomError("loose_float", "must be a number")
    if not math.isfinite(f):
        raise PydanticCustomError("loose_float", "must be a finite number")
    return f


def _to_bool(v: Any) -> bool | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s == "":
            return None
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    raise PydanticCustomError("loose_bool", 'must be "yes" or "no" (or true/false)')


def _to_str(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise PydanticCustomError("loose_str", "must be a string")
    if isinstance(v, (int, float)) and not (isinstance(v, float) and not math.isfinite(v)):
        return str(v)
    if isinstance(v, str):
        return v
    raise PydanticCustomError("loose_str", "must be a string")


def _to_text(v: Any) -> str | None:
    """Free text where an absent value is None, but text is kept as sent (no number coercion)."""
    if v is None:
        return None
    if isinstance(v, str):
        return v
    raise PydanticCustomError("loose_str", "must be a string")


LooseInt = Annotated[int | None, BeforeValidator(_to_int)]
LooseFloat = Annotated[float | None, BeforeValidator(_to_float)]
LooseBool = Annotated[bool | None, BeforeValidator(_to_bool)]
LooseStr = Annotated[str | None, BeforeValidator(_to_str)]
Text = Annotated[str | None, BeforeValidator(_to_text)]
