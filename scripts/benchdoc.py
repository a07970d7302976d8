"""Shared by scripts/bench_*.py: the machine line and section-wise updates of docs/benchmarks.md
(each benchmark owns one "## " section and replaces it when re-run)."""
from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"`nproc` = {os.cpu_count()}, CPU: {model}, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def write_section(title: str, body: str, path: Path = DOC) -> None:
    text = path.read_text() if path.exists() else (
        "# Benchmarks\n\nFigures written by `scripts/bench_*.py`; each script owns one section "
        f"and replaces it when re-run.\n\nMachine when this file was created: {machine()}.\n")
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def add_subsection(title: str, subtitle: str, body: str, path: Path = DOC) -> None:
    """Put a "### subtitle" run into section `title`, keeping the section's lead text and its
    other "### " subsections (earlier runs): the new run comes first after the lead, a run with
    the same subtitle is replaced. Makes the section if it is missing."""
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", re.S | re.M)
    found = pattern.search(text)
    old = found.group(1) if found else ""
    parts = re.split(r"^(?=### )", old, flags=re.M)
    lead, runs = parts[0].strip(), [p.strip() for p in parts[1:]]
    runs = [r for r in runs if r.splitlines()[0] != f"### {subtitle}"]
    blocks = ([lead] if lead else []) + [f"### {subtitle}\n\n{body.strip()}"] + runs
    write_section(title, "\n\n".join(blocks), path)


def publish(title: str, lines: list[str], write: bool = True) -> None:
    """Print a benchmark's section and (unless told not to) store it in docs/benchmarks.md."""
    body = "\n".join(lines)
    print(body)
    if write:
        write_section(title, body)


RELIABILITY = DOC.parent / "reliability.md"
RELIABILITY_HEADER = ("# Reliability and scale\n\nLimits, failure handling and the figures that measure them. "
                      "Each `scripts/bench_*.py` that writes here owns one section and replaces it when re-run.\n")


def publish_reliability(title: str, lines: list[str], write: bool = True) -> None:
    """Print a section and (unless told not to) store it in docs/reliability.md."""
    body = "\n".join(lines)
    print(body)
    if write:
        if not RELIABILITY.exists():
            RELIABILITY.write_text(RELIABILITY_HEADER)
        write_section(title, body, RELIABILITY)
