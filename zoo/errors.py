"""Errors that say what was received and what is allowed."""

import difflib


class UnknownNameError(KeyError, ValueError):
    """An unknown model, mapping or option name; lists the closest valid ones.

    Subclasses both `KeyError` (it is a failed look-up) and `ValueError` (it is bad input), so
    either `except` clause catches it.
    """

    def __init__(self, kind, name, valid):
        valid = sorted(valid)
        close = difflib.get_close_matches(str(name), valid, n=5, cutoff=0.4)
        msg = f"Unknown {kind} {name!r}."
        if close:
            msg += f" Did you mean: {', '.join(repr(c) for c in close)}?"
        if valid:
            shown = ", ".join(valid) if len(valid) <= 40 else ", ".join(valid[:40]) + ", ..."
            msg += f" Valid {kind} names: {shown}."
        else:
            msg += f" There are no {kind} names yet."
        super().__init__(msg)
        self.name = name
        self.closest = close

    def __str__(self):  # KeyError would otherwise print the message in quotes
        return self.args[0]


def check_choice(arg, value, allowed):
    if value not in allowed:
        raise ValueError(
            f"Received {arg}={value!r}; allowed values are {', '.join(repr(a) for a in allowed)}."
        )
    return value


def check_range(arg, value, low=None, high=None, low_open=False, high_open=False, integer=False):
    """Raise a ValueError naming `arg`, the received value and the allowed interval."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if integer:
        ok = ok and float(value).is_integer()
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        kind = "an integer" if integer else "a number"
        raise ValueError(f"Received {arg}={value!r}; {arg} must be {kind} in {interval}.")
    return value
