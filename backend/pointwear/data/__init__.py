"""Input data: subject folders (one reader, one writer) and converters from other layouts."""
from .subject import SmplParams, Subject, SubjectWarning, read_subject, write_subject

__all__ = ["SmplParams", "Subject", "SubjectWarning", "read_subject", "write_subject"]
