"""flexunet.projects: ``flexunet project``, one dataset's whole chain (train, evaluate, export, tiled
inference, parity, throughput) with the commands a user runs, and the tables of its results.

The runner (:mod:`~flexunet.projects.runner`) writes only into the project folder it is given;
:mod:`~flexunet.projects.results` builds and writes a run's results folder,
:mod:`~flexunet.projects.report` its markdown, the project README's results block and the
cross-project summary table (``flexunet project --summary DIR``), :mod:`~flexunet.projects.cli` the
command.  The dataset folders beside these modules (``IHC/``, ``Lizard/``...) are data, not code.
"""
