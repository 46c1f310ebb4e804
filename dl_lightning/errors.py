"""The one error type for bad user input; the CLI prints its message as one line and exits 2."""


class InputError(ValueError):
    """Input the user can fix: the message names the problem and the fix, in one line."""


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in ``...`` when it was cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(exc: BaseException, limit: int = 400) -> str:
    """An exception's message on one line (whitespace runs collapsed), clipped to ``limit`` characters."""
    return clip(" ".join(str(exc).split()), limit)


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of ``exc``'s message (its type's name when empty), clipped to ``limit`` characters."""
    text = str(exc).strip()
    return clip(text.splitlines()[0] if text else type(exc).__name__, limit)
