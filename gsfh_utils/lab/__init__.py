"""The experiment machinery behind the notebooks (not part of the paper's mathematics).

- ``notebook``: ``start`` a notebook run from its parameters cell; the run's claims, figures,
  tables and results file; ``progress`` bars that stay out of executed notebooks.
- ``parameters``: the parameters cell and the small/full profile tables.
- ``claims``: theorem, finding and identity claims, recorded with their margins.
- ``stats``: tests that return a p-value with an effect size; round-off bounds.
- ``plotting``: the style, ``savefig`` and the figure functions of every chapter.
- ``results``: the results files and the claims tables made from them.
- ``io``: run folders, atomic writes, the promotion of a passing run.
- ``provenance``: package and library versions, git object ids of the code of a run.
- ``runner``: ``python -m gsfh_utils.lab.runner`` executes the notebooks with papermill.
- ``verify``: ``python -m gsfh_utils.lab.verify`` reruns them and compares every claim with the
  committed results.
"""

from .claims import ClaimFailed
from .notebook import Notebook, progress, start

__all__ = ["ClaimFailed", "Notebook", "progress", "start"]
