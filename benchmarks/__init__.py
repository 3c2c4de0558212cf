"""Benchmarks of hbfp-timm: the paper's tables reproduced side by side with its numbers.

A package beside the library, not part of its API; run it from a checkout (or an editable install):

* ``python -m benchmarks.market`` / ``benchmarks.duke`` / ``benchmarks.cuhk03 --split labeled|detected`` /
  ``benchmarks.table1``: Table 1 of the paper (Rank-1 and mAP per data set);
* ``python -m benchmarks.ablation``: the Table 2 ablations and the Table 3 lambda sets;
* ``python -m benchmarks.speed``: throughput and latency.

Without a data set the Table 1 commands run the whole pipeline on a synthetic set in the Market-1501 layout,
labelled as such (see :mod:`benchmarks.harness`). With the trainer's recipe flags, ``--model-arg`` and
``--seeds``, the Table 1-3 commands also compare configurations on a user's own data set, with the spread over
seeds beside the mean.
"""
