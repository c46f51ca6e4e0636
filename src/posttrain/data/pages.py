"""Keep a pass over memory-mapped Arrow files from filling the process's
resident set.

`datasets` reads Arrow files through mmap: every page a pass touches stays
mapped, and counted in the process's RSS, until the table is freed, so one
pass over a 60 GB file shows 60 GB of RSS although those pages are clean
file cache. `release` hands the pages of given Arrow tables back to the
kernel (madvise MADV_DONTNEED: for a read-only file mapping the page table
entries go, the data stays in the page cache and a later read faults it
back in); `Released` does so every 0.1 s, from a thread, for the Datasets
a step is reading in a pass it does not control (TRL's packing, datasets'
save_to_disk).

Only ranges inside a read-only mapping of an `.arrow` file (from
/proc/self/maps) are released, and only while a live buffer holds that
mapping, so memory that is not such a mapping (an in-memory table on the
heap) is never touched. Elsewhere than on Linux this does nothing."""

from __future__ import annotations

import ctypes
import mmap
import threading

MADV_DONTNEED = 4
_PAGE = mmap.PAGESIZE
try:
    _madvise = ctypes.CDLL(None, use_errno=True).madvise
    _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
except (OSError, AttributeError):  # no libc madvise
    _madvise = None


def _arrow_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's read-only mappings of .arrow files."""
    try:
        lines = open("/proc/self/maps").read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].endswith(".arrow") and "w" not in parts[1]:
            start, end = parts[0].split("-")
            out.append((int(start, 16), int(end, 16)))
    return sorted(out)


def _buffers(table):
    for column in table.columns:
        for chunk in getattr(column, "chunks", [column]):
            for buf in chunk.buffers():
                if buf is not None and buf.size:
                    yield buf


def _containing(tables, mappings):
    """For each buffer of the tables that lies in one of `mappings`: (buffer range, its mapping)."""
    for table in tables:
        for buf in _buffers(table):
            lo, hi = buf.address, buf.address + buf.size
            for start, end in mappings:
                if start <= lo and hi <= end:
                    yield (lo, hi), (start, end)
                    break


def _advise(ranges) -> int:
    advised, last = 0, 0
    for lo, hi in sorted(ranges):
        lo = max(lo, last)
        if lo < hi:
            _madvise(lo, hi - lo, MADV_DONTNEED)
            advised += hi - lo
            last = hi
    return advised


def release(*tables) -> int:
    """Release the pages of these Arrow tables (or record batches) that lie in
    memory-mapped .arrow files; returns the bytes advised."""
    if _madvise is None:
        return 0
    ranges = [(max(start, lo - lo % _PAGE), min(end, -(-hi // _PAGE) * _PAGE))
              for (lo, hi), (start, end) in _containing(tables, _arrow_mappings())]
    return _advise(ranges)


def mapped_files(*tables) -> set[tuple[int, int]]:
    """The whole .arrow mappings that hold these tables' buffers (valid while the tables live)."""
    if _madvise is None:
        return set()
    return {mapping for _, mapping in _containing(tables, _arrow_mappings())}


class Released:
    """A context in which the pages of the watched Datasets' mapped files are
    released every `every_s` seconds (and once at the end): a pass reading a
    few hundred MB a second leaves at most that much mapped. The mappings are
    found once per Dataset; each release is one madvise per file."""

    def __init__(self, *datasets, every_s: float = 0.1):
        self.every_s = every_s
        self._held = list(datasets)  # keeps the mappings alive while they are advised
        self._files = mapped_files(*(ds.data.table for ds in datasets))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="release-mapped-arrow")

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            _advise(self._files)

    def __enter__(self):
        if self._files:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        _advise(self._files)
