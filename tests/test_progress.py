"""hbfp_timm.utils.progress: a bar on a terminal, whole lines (and none for short work) in logs and pipes."""
import io

from hbfp_timm.utils.progress import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_the_redrawn_tqdm_bar():
    stream = _Terminal()
    for _ in progress(range(3), desc='work', file=stream, mininterval=0):
        pass
    assert '\r' in stream.getvalue() and 'work' in stream.getvalue()


def test_a_log_gets_whole_lines_with_the_postfix_and_no_carriage_returns():
    stream = io.StringIO()
    bar = progress(total=4, desc='epoch 1/2', file=stream, interval=0)
    for step in range(4):
        bar.update()
        bar.set_postfix(loss=f'{1 / (step + 1):.3f}')  # shown with the next line, never as a line of its own
    bar.close()
    lines = stream.getvalue().splitlines()
    assert '\r' not in stream.getvalue()
    assert [line.split()[3] for line in lines] == ['1/4', '2/4', '3/4', '4/4']
    assert lines[0].startswith('epoch 1/2:  25% 1/4') and 'loss=0.500' in lines[2]


def test_a_log_gets_nothing_from_work_shorter_than_the_interval():
    stream = io.StringIO()
    assert list(progress(range(1000), desc='quick', file=stream, interval=60)) == list(range(1000))
    assert stream.getvalue() == ''


def test_disabled_progress_writes_nothing_anywhere():
    for stream in (io.StringIO(), _Terminal()):
        assert sum(progress(range(5), file=stream, disable=True)) == 10
        assert stream.getvalue() == ''
