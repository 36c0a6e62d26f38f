"""Input validation of the pack's nodes at queue time, with one clear message per problem.

ComfyUI 0.3.75 skips its own min/max and option checks for every input a node's `validate_inputs` takes,
and repeats a returned message once per such input. So the nodes check their own schema's limits here,
and a problem is raised (once) instead of returned (once per input).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .api import io


class InvalidInput(ValueError):
    """A node input that cannot work; the message names the input and the fix."""


# ComfyUI reports an error's type as module + name; without this it would carry the pack's install path.
InvalidInput.__module__ = "video_infinity"


def check_limits(schema: io.Schema, values: dict[str, Any]) -> bool:
    """Raises InvalidInput for the first given value outside its input's min/max or options. False when a
    number input holds something that is not a number: ComfyUI reports that one itself.

    Values that are None (fed by a link, or missing: ComfyUI reports those itself) are skipped.
    """
    for spec in schema.inputs:
        value = values.get(spec.id)
        if value is None:
            continue
        if isinstance(spec, (io.Int.Input, io.Float.Input)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return False
            if spec.min is not None and value < spec.min:
                raise InvalidInput(f"{spec.id} is {value}; it must be at least {spec.min}")
            if spec.max is not None and value > spec.max:
                raise InvalidInput(f"{spec.id} is {value}; it must be at most {spec.max}")
        options = getattr(spec, "options", None)
        if isinstance(spec, io.Combo.Input) and options and value not in options:
            shown = options if len(options) <= 20 else [*options[:20], "..."]
            raise InvalidInput(f"{spec.id} is {value!r}; use one of {shown}")
    return True


def validate_node(node: type[io.ComfyNode], values: dict[str, Any], check: Callable[[], None] | None = None) -> bool:
    """The schema's limits, then the node's own rules (`check`, which may raise ValueError); True or raises once."""
    if not check_limits(node.define_schema(), values):
        return True  # a value of the wrong type: ComfyUI's own message says so, once
    if check is not None:
        try:
            check()
        except InvalidInput:
            raise
        except ValueError as error:
            raise InvalidInput(str(error)) from None
    return True


def given(values: dict[str, Any]) -> dict[str, Any]:
    """The values that are known at validation (not None)."""
    return {name: value for name, value in values.items() if value is not None}
