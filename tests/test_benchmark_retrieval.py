"""benchmarks.retrieval at its quick sizes: each probe measures one call and the methods agree."""
import pytest

from benchmarks import retrieval


@pytest.mark.parametrize('task, ours, baseline', [
    ('topk', 'topk', 'naive'), ('topk', 'topk', 'faiss'), ('evaluate', 'evaluate_features', 'naive'),
    ('rerank', 're_ranking', 're_ranking_features'),
])
def test_probes_measure_time_and_memory_and_agree_with_the_baseline(task, ours, baseline):
    first = retrieval._probe(task, ours, 'quick')
    second = retrieval._probe(task, baseline, 'quick')
    for row in (first, second):
        assert row['seconds'] > 0 and row['cpu_seconds'] > 0 and row['extra_bytes'] >= 0
    agreement = retrieval._agree(task, first, second)
    if task == 'rerank':
        assert float(agreement.split()[-1]) <= 1e-5
    else:
        assert agreement in (True, 1.0)


def test_table_lists_every_row_with_its_ratio():
    rows = [dict(task='topk', method='topk', sizes=[1, 2, 3, 4], seconds=2.0, cpu_seconds=3.0, extra_bytes=2 ** 30,
                 agrees_with_first=1.0),
            dict(task='topk', method='naive', sizes=[1, 2, 3, 4], seconds=8.0, cpu_seconds=9.0, extra_bytes=2 ** 31,
                 agrees_with_first=1.0, time_ratio_to_ours=4.0, cpu_ratio_to_ours=3.0)]
    table = retrieval.format_table({'topk': rows})
    assert '| topk | 1x2x3x4 | naive | 8.00 | 9.00 | 2.00 | 4.00 | 3.00 | 1.0 |' in table


def test_unknown_task_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        retrieval.main(['--tasks', 'sorting'])
    assert exit_info.value.code == 2


def test_device_topk_times_a_half_gallery_and_agrees_with_exact_search():
    result = retrieval.device_topk('cpu', 'quick', repeats=2)
    assert result['sizes'] == list(retrieval.DEVICE_SIZES['quick']) and result['gallery_dtype'] == 'float16'
    assert len(result['seconds']) == 2 and result['median_seconds'] > 0
    assert result['extra_device_bytes'] is None  # device memory is only measured on CUDA
    assert result['agreement'] == 1.0  # same float16 values, searched exactly both ways
    line = retrieval.format_device_result(result)
    assert 'top-10 of 50 queries in 20,000 x 64-d float16 on cpu' in line and 'target on one H100: <= 0.2 s' in line


def test_an_unavailable_device_is_one_line(capsys):
    assert retrieval.main(['--device', 'nonsense']) == 2
    err = capsys.readouterr().err
    assert err.startswith('python -m benchmarks.retrieval: error: --device nonsense: ') and err.count('\n') == 1
