"""Errors that name the file and field at fault, so a user can fix their input."""
from __future__ import annotations

from pathlib import Path


class PointwearError(Exception):
    """Base error: `str()` reads "<file>: <field>: <message> (hint: ...)"."""

    code = "error"

    def __init__(self, message: str, *, file: str | Path | None = None,
                 field: str | None = None, hint: str | None = None) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.field = field
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.field) if p]
        text = ": ".join(parts + [self.message])
        return f"{text} (hint: {self.hint})" if self.hint else text


class InputError(PointwearError):
    """A user-supplied file or parameter is missing, malformed or inconsistent."""

    code = "bad_input"


class BodyModelError(InputError):
    """A body model file cannot be used (missing, wrong keys, shapes, NaNs, joint count)."""

    code = "bad_body_model"


class SubjectError(InputError):
    """A subject folder fails validation."""

    code = "bad_subject"
