"""One error tree for ckptsync.

Every error the tool raises on purpose is a :class:`CkptsyncError`. It carries a
one-line message (what is wrong), an optional one-line hint (what to do), the
process exit code the CLI uses for it, and whether it may heal by itself
(``transient``), which is what the retry layer looks at.
"""

from __future__ import annotations

import copy

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOTHING = 3


class CkptsyncError(Exception):
    """Base of every error ckptsync raises on purpose."""

    exit_code = EXIT_ERROR
    transient = False

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def prefixed(self, context: str) -> CkptsyncError:
        """A copy of this error whose message starts with ``context``; kind, hint and fields stay."""
        other = copy.copy(self)
        other.message = f"{context}: {self.message}"
        other.args = (other.message,)
        return other


class UsageError(CkptsyncError):
    """The command line, a URI or a configuration value is wrong."""

    exit_code = EXIT_USAGE


class NothingToRestore(CkptsyncError):
    """The remote holds no committed checkpoint that matches the request."""

    exit_code = EXIT_NOTHING


class StoreError(CkptsyncError):
    """The object store failed; ``transient`` says whether retrying may help.

    ``key`` is the object concerned, ``code`` the server's error code (S3's
    ``SlowDown``, ``NotImplemented``, ...) when it gave one.
    """

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        transient: bool = False,
        key: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.transient = transient
        self.key = key
        self.code = code


class NotFound(StoreError):
    """The object does not exist."""


class AlreadyExists(StoreError):
    """A conditional create found the key already taken."""


class ObjectTooLarge(StoreError):
    """An object is larger than the reader allowed (``get(..., max_size=...)``): never read whole."""


class NoAnswer(StoreError):
    """The store did not answer in time (a connect or read timeout): transient.

    The retry layer treats it apart: a store that gave no answer for a whole retry
    budget is not waited for again at once (see :mod:`ckptsync.store.retrying`).
    """

    def __init__(self, message: str, hint: str | None = None, *, key: str | None = None) -> None:
        super().__init__(message, hint, transient=True, key=key)


class FormatError(CkptsyncError):
    """A manifest or chunk does not follow docs/FORMAT.md (corrupt or hostile)."""


class NewerFormatError(FormatError):
    """The remote was written by a newer ckptsync: readers must stop, not skip it."""


class IntegrityError(CkptsyncError):
    """Data read back does not match the hash or size the manifest declares."""

    def __init__(self, message: str, hint: str | None = None, *, chunk: str | None = None, path: str | None = None) -> None:
        super().__init__(message, hint)
        self.chunk = chunk
        self.path = path


class LocalError(CkptsyncError):
    """The local file system refused an operation (no space, permission, ...)."""


class UnstorableEntry(LocalError):
    """A checkpoint holds an entry ckptsync will not store as it lies (a name the format cannot carry,
    a link that dangles, loops or leaves the watched folder, an unreadable folder, a FIFO...): nothing
    of the checkpoint is committed. The message names the checkpoint, the entry and why."""
