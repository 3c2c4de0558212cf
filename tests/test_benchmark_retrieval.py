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
