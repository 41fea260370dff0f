"""Errors a user can cause. The CLI prints each as one line on stderr and exits with code 2."""


class VasaError(Exception):
    """Bad input: a file, an argument or a checkpoint the engine cannot use. The message names the problem."""


class InputError(VasaError):
    """An input file or value that cannot be used (missing, unreadable, wrong format, out of range)."""


class CheckpointError(VasaError):
    """A weights file with missing, unexpected or mis-shaped tensors, or one that is not what it claims to be."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (white space folded), or its type name when the message is empty."""
    return " ".join(str(exc).split()) or type(exc).__name__


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
