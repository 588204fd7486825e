"""The fault-injection run (scripts/faults.py): its clients and its checker.

`checker` judges a recorded history against the final table state, with no
database; `client` is the load (registrar, workers, drain) that records the
history. Both are importable by the worker processes the run spawns.
"""
