"""Progress output: plain periodic lines when not on a terminal, never carriage-return redraws."""

import io

from tqdm import tqdm

from p2p_dist.progress import PlainProgress, progress_bar


def test_off_a_terminal_progress_is_a_few_whole_lines_not_one_redraw_per_update():
    log = io.StringIO()
    with progress_bar(760, "segmenter", "batch", file=log) as bar:
        assert isinstance(bar, PlainProgress)
        for step in range(760):
            bar.set_postfix(loss=f"{1 / (step + 1):.3f}")
            bar.update()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 10 <= len(lines) <= 11  # every 10% (the last one at 100%)
    assert lines[-1].startswith("segmenter: 760/760 batch (100%)") and "loss=0.001" in lines[-1]


def test_lines_also_come_every_30_seconds_and_once_at_the_end(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("p2p_dist.progress.time.monotonic", lambda: now[0])
    log = io.StringIO()
    bar = PlainProgress(total=1000, desc="translate", unit="img", file=log)
    for _ in range(5):
        now[0] += 31
        bar.update()
    bar.update()
    bar.close()
    bar.close()
    assert len(log.getvalue().splitlines()) == 6  # five after 30 s each, one at close, none twice


def test_iterating_counts_items_and_disabled_progress_is_silent():
    log = io.StringIO()
    assert list(progress_bar(3, "verify", "shard", file=log, iterable=iter("abc"))) == ["a", "b", "c"]
    assert log.getvalue().splitlines()[-1].startswith("verify: 3/3 shard (100%)")
    quiet = io.StringIO()
    bar = progress_bar(3, "x", file=quiet, enabled=False)
    assert isinstance(bar, tqdm)
    bar.update(3)
    bar.close()
    assert quiet.getvalue() == ""


def test_on_a_terminal_it_is_tqdm():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(progress_bar(3, "x", file=Terminal()), tqdm)
