"""The error tree. Exit codes are attached here and applied only by the CLI.

    ConveyorError                 1
    ├── ConfigError               78  EX_CONFIG: the function definition is unusable
    ├── EventError                65  EX_DATAERR: the event cannot be understood
    │   └── OutsideInputsError    65  it names an object outside the definition's inputs
    ├── StorageError              74  EX_IOERR: an object could not be read or written
    │   └── CredentialsError      77  EX_NOPERM: no usable credentials for a provider
    ├── HandlerError              70  EX_SOFTWARE: the model (handler) failed
    │   ├── HandlerTimeout       124  the model outlived its deadline and was killed
    │   └── NoOutputError         70  the model exited 0 but wrote nothing required
    ├── DelegationError           69  EX_UNAVAILABLE: the hand-off to AWS Batch failed
    └── Interrupted              143  SIGTERM / SIGINT arrived; the work was stopped

Every error carries a one-line message a user can act on, plus optional context (the
config key, the bucket/key, the child's exit code) that ends up in the result record.
"""

from __future__ import annotations

from typing import Any


class ConveyorError(Exception):
    exit_code = 1
    kind = "error"

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = {k: v for k, v in context.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "message": self.message, **self.context}


class ConfigError(ConveyorError):
    exit_code = 78
    kind = "config"

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None) -> None:
        where = " ".join(part for part in (f"key '{key}'" if key else "", f"in {source}" if source else "") if part)
        super().__init__(f"{where}: {message}" if where else message, key=key, source=source)


class EventError(ConveyorError):
    exit_code = 65
    kind = "event"


class OutsideInputsError(EventError):
    """The event names an object outside every `input[]` path (see conveyor.accept_any_input)."""

    kind = "outside_inputs"


class StorageError(ConveyorError):
    exit_code = 74
    kind = "storage"


class CredentialsError(StorageError):
    exit_code = 77
    kind = "credentials"


class HandlerError(ConveyorError):
    exit_code = 70
    kind = "handler"


class HandlerTimeout(HandlerError):
    exit_code = 124
    kind = "timeout"


class NoOutputError(HandlerError):
    kind = "no-output"


class DelegationError(ConveyorError):
    exit_code = 69
    kind = "delegation"


class Interrupted(ConveyorError):
    exit_code = 143
    kind = "interrupted"


def exit_code_for(kind: str | None) -> int:
    """The exit code of an error kind as recorded in a result record ('internal' and unknown: 1)."""
    stack: list[type[ConveyorError]] = [ConveyorError]
    while stack:
        cls = stack.pop()
        if cls.kind == kind:
            return cls.exit_code
        stack.extend(cls.__subclasses__())
    return 1


def error_for(kind: str | None, message: str) -> ConveyorError:
    """Rebuild an error of the right class from a result record's error kind (for Lambda's errorType)."""
    stack: list[type[ConveyorError]] = [ConveyorError]
    while stack:
        cls = stack.pop()
        if cls.kind == kind:
            error = ConveyorError.__new__(cls)
            ConveyorError.__init__(error, message)
            return error
        stack.extend(cls.__subclasses__())
    return ConveyorError(message)
