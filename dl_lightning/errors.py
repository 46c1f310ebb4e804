"""The one error type for bad user input; the CLI prints its message as one line and exits 2."""


class InputError(ValueError):
    """Input the user can fix: the message names the problem and the fix, in one line."""
