"""Helpers shared by the benches: processes, /proc sampling, wrk runs, the nginx backend, machine facts, reports."""
