"""Shared test setup: tests train small nets on CPU; one thread keeps parallel runs fair and fast."""

import torch

torch.set_num_threads(1)

# Database fixtures (real SQLite file and real PostgreSQL): db_url, repo, db_backend, pg_server, ...
from db_fixtures import *  # noqa: E402, F403

# The results databases of test_query / test_reports / test_plots: results_sqlite, results_postgres, results_url.
from results_data import results_postgres, results_sqlite, results_url  # noqa: E402, F401
