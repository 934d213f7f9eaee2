"""Prefect flows and the ``scan-edge`` command: compose the stage tasks into the pipeline's
DAG (``reproduce``), re-profile devices on a schedule (``reprofile``), parse commands
(``cli*.py``). The plumbing they share with the tasks (task runners from params, a real
Prefect API when a run needs one) lives in ``tasks._runners`` and ``tasks._server``.
"""
