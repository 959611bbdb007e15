"""The CoDiEmb study: CoDiEmb against simpler set-ups on the same recipe and step budget.

- :mod:`codiemb_study.methods`: the methods compared ((a)-(g)) and the fusion rows (f), (h).
- :mod:`codiemb_study.runner`: trains and evaluates every method x seed, one JSON file per run (resumable).
- :mod:`codiemb_study.report`: Markdown tables (mean and spread over seeds) and the IR-vs-STS trade-off plot.

Command line: ``python recipes/study/run_study.py run|report ...`` (see ``recipes/study/README.md``). This is
the study's code, not part of the installed library: the scripts next to it import it (Python puts the script's
folder on the path), and the tests through pytest's ``pythonpath`` setting (pyproject.toml).
"""

from codiemb_study.methods import (
    FUSION_ROWS,
    METHODS,
    RATIO_FUSION_INPUTS,
    RATIO_FUSION_ROWS,
    MethodSetup,
    StudyMethod,
)
from codiemb_study.runner import Study

__all__ = ["FUSION_ROWS", "METHODS", "RATIO_FUSION_INPUTS", "RATIO_FUSION_ROWS", "MethodSetup", "Study", "StudyMethod"]
