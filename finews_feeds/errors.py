"""The error tree: every error the library raises on purpose is a :class:`FinewsError`.

The CLI turns these into one-line messages and exit codes; anything else is a bug and
gets a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class FinewsError(Exception):
    """Base of every error this package raises for a user to act on."""

    #: Process exit code the CLI uses for this kind of error.
    exit_code: int = 1
    #: Optional advice printed after the message.
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class ConfigError(FinewsError):
    """A configuration file, variable or flag is missing, unknown or invalid."""

    exit_code = 2


class SiteError(FinewsError):
    """The Jekyll site cannot be read at all (missing folder, unreadable _config.yml)."""

    exit_code = 3


class PostError(FinewsError):
    """One post file cannot be read; the collector records it and goes on."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.reason = message


class BuildError(FinewsError):
    """Feeds could not be written (output folder not writable, ...)."""

    exit_code = 4


class DigestError(FinewsError):
    """A digest could not be rendered (template missing or broken)."""

    exit_code = 5


class StoreError(FinewsError):
    """The subscriber database cannot be opened, created or upgraded."""

    exit_code = 6


class DatabaseConnectionLost(StoreError):
    """The connection to the database went away in the middle of the work (a server restart, an ended session)."""


class SubscriberError(FinewsError):
    """A subscriber operation was refused (bad address, unknown subscriber)."""

    exit_code = 7


class DeliveryError(FinewsError):
    """Sending failed in a way that stops the whole run (cannot connect, login refused)."""

    exit_code = 8


class TokenError(FinewsError):
    """A signed token was forged, tampered with or is for another purpose."""

    exit_code = 9


class MailboxError(FinewsError):
    """The bounces mailbox cannot be reached, or refused a login or a command."""

    exit_code = 10


@dataclass(frozen=True)
class ErrorRecord:
    """An error as another process can send it back (an exception's hint does not survive pickling):
    its class name, message, hint and exit code."""

    kind: str
    message: str
    hint: str | None
    exit_code: int

    @classmethod
    def of(cls, exc: BaseException) -> ErrorRecord:
        if isinstance(exc, FinewsError):
            return cls(type(exc).__name__, exc.message, exc.hint, exc.exit_code)
        # Not one of ours: a bug, named with its type so the report says what it was.
        return cls("FinewsError", f"{type(exc).__name__}: {exc}", None, FinewsError.exit_code)

    def restore(self) -> FinewsError:
        """The error as its own class where it can be made again, with its exit code."""
        kind = globals().get(self.kind)
        if not (isinstance(kind, type) and issubclass(kind, FinewsError)):
            kind = FinewsError
        try:
            error = kind(self.message, hint=self.hint)
        except TypeError:  # a class with arguments of its own (PostError)
            error = FinewsError(self.message, hint=self.hint)
        error.exit_code = self.exit_code
        return error
