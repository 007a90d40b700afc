"""Errors a user can fix. Anything else is a bug and keeps its traceback."""


class MhtagError(Exception):
    """A mistake the user can correct; the message says what to do."""


class ImageError(MhtagError):
    """An image file that cannot be used, with the file and the reason."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class NotFoundError(MhtagError):
    """Something asked for by its key (a row id, an index) does not exist."""


class BusyError(MhtagError):
    """Another writer holds the index; try again when it is done."""
