"""posttrain.data.pages: the pages of memory-mapped Arrow files a pass has
read leave the process's resident set, and nothing else is touched."""

import sys
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and madvise: Linux only")


def _rss_file_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssFile in /proc/self/status")


def _mapped(tmp_path, rows=3000):
    from datasets import Dataset, load_from_disk

    Dataset.from_dict({"text": [f"{i:06d} " * 2000 for i in range(rows)]}).save_to_disk(str(tmp_path / "ds"))  # ~42 MB
    return load_from_disk(str(tmp_path / "ds"))


def test_released_pages_leave_the_resident_set_and_the_data_reads_the_same(tmp_path):
    from posttrain.data.pages import release

    ds = _mapped(tmp_path)
    before = _rss_file_mb()
    first = [len(t) for t in ds.with_format("arrow")["text"].to_pylist()]
    touched = _rss_file_mb()
    assert touched - before > 30  # the pass mapped the whole file
    assert release(ds.data.table) >= 40e6
    assert _rss_file_mb() - before < 5
    assert [len(t) for t in ds.with_format("arrow")["text"].to_pylist()] == first  # faulted back in from the page cache
    assert ds[1234]["text"].startswith("001234 ")


def test_in_memory_tables_are_left_alone(tmp_path):
    import pyarrow as pa

    from posttrain.data.pages import release

    _mapped(tmp_path, rows=10)  # an .arrow mapping exists, elsewhere
    table = pa.table({"x": list(range(100_000))})
    assert release(table) == 0
    assert table["x"].to_pylist() == list(range(100_000))


def test_the_watching_thread_keeps_a_pass_flat(tmp_path):
    from posttrain.data.pages import Released

    ds = _mapped(tmp_path)
    before, peak = _rss_file_mb(), 0.0
    with Released(ds, every_s=0.02):
        for batch in ds.with_format("arrow").iter(batch_size=100):
            batch["text"].to_pylist()
            peak = max(peak, _rss_file_mb() - before)
            time.sleep(0.01)
    assert peak < 20 and _rss_file_mb() - before < 5
