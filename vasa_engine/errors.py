"""Errors a user can cause. The CLI prints each as one line on stderr and exits with code 2."""


class VasaError(Exception):
    """Bad input: a file, an argument or a checkpoint the engine cannot use. The message names the problem."""


class InputError(VasaError):
    """An input file or value that cannot be used (missing, unreadable, wrong format, out of range)."""


class CheckpointError(VasaError):
    """A weights file with missing, unexpected or mis-shaped tensors, or one that is not what it claims to be."""
