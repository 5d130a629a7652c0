"""Helpers every benchmark shares: process CPU/RSS from /proc, the machine, the results doc.

Why /proc and not psutil: it is exact for a single process (utime+stime in clock ticks, VmRSS),
costs nothing to install, and every machine this project runs on is Linux.
"""

from __future__ import annotations

import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")
DOC_TITLE = "# Benchmarks"
DOC_INTRO = (
    "Results of `make bench` (scripts/bench.sh). Each section is rewritten by its benchmark on every\n"
    "run; numbers are from the machine named in the section, so compare ratios, not absolutes.\n"
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the ")" of comm: state is field 0, utime field 11, stime field 12 (man 5 proc).
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy so far (every core, every process, /proc/stat).

    Minus what the measured processes used, it shows how much other work (a neighbour's build or
    test run on a shared machine) competed with the benchmark.
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of a process now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass(frozen=True, slots=True)
class Machine:
    """What a reader needs to judge whether numbers from another run compare."""

    cores: int
    model: str
    memory_gib: float
    kernel: str
    python: str

    def describe(self) -> str:
        return (f"{self.cores} cores ({self.model}), {self.memory_gib:.1f} GiB RAM, "
                f"Linux {self.kernel}, Python {self.python}")


def machine() -> Machine:
    """The machine this process runs on."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    meminfo = Path("/proc/meminfo").read_text()
    mem = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
    return Machine(
        cores=os.cpu_count() or 1,
        model=match.group(1).strip() if match else "unknown CPU",
        memory_gib=int(mem.group(1)) / (1024 * 1024) if mem else 0.0,
        kernel=platform.release(),
        python=platform.python_version(),
    )


def today() -> str:
    return time.strftime("%Y-%m-%d %H:%M %Z")


def replace_section(doc: Path, heading: str, body: str) -> None:
    """Put ``## <heading>`` with ``body`` into ``doc``, replacing only that section.

    Sections of other benchmarks (other ``## `` headings) are left exactly as they are, so that
    independent benchmark steps can share one results page.
    """
    text = doc.read_text() if doc.exists() else f"{DOC_TITLE}\n\n{DOC_INTRO}"
    section = f"## {heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.write_text(text.rstrip("\n") + "\n")
