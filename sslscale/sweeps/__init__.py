"""Sweeps: `space` (a search space as data, KEY=DIST), `tune` (Ray Tune: trials, schedulers, searchers), and the
sweep's own files with no Ray in them: `artifacts` (the parent run, plots) and `report` (the ranked table, the
retrain command)."""
