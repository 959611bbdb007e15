"""The CoDiEmb study (issue 5): CoDiEmb against simpler set-ups on the same recipe and step budget.

- :mod:`hf_codiemb.study.methods`: the methods compared ((a)-(g)).
- :mod:`hf_codiemb.study.runner`: trains and evaluates every method x seed, one JSON file per run (resumable).
- :mod:`hf_codiemb.study.report`: Markdown tables (mean and spread over seeds) and the IR-vs-STS trade-off plot.

Command line: ``python recipes/study/run_study.py run|report ...`` (see ``recipes/study/README.md``).
"""

from hf_codiemb.study.methods import FUSION_ROWS, METHODS, MethodSetup, StudyMethod
from hf_codiemb.study.runner import Study

__all__ = ["FUSION_ROWS", "METHODS", "MethodSetup", "Study", "StudyMethod"]
