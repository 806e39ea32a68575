"""The sandbox that runs model-written code: an allowlisted bubblewrap view (view.py), the launch
command (launch.py), the process runner (run.py), the start-up check (check.py, `python -m sandbox check`)."""
