"""Exceptions raised by the engine. Messages are one line and name the offending input."""


class NeARError(Exception):
    """Base class of every error the engine raises on purpose."""


class InputError(NeARError, ValueError):
    """The mask, image or their geometry cannot be refined (empty, 2D, NaN, grid mismatch...)."""


class PriorError(NeARError):
    """The prior file is missing, corrupt or incompatible."""


class Cancelled(NeARError):
    """The caller's cancel callback asked to stop; nothing was written."""


class RefinementError(NeARError, RuntimeError):
    """Refinement failed inside the engine (a bug, out of memory, a device fault); the message
    names the cause in one line and the original exception is chained. Inputs are untouched."""
