"""The ``fedattr`` command line (typer): run, sweep, deploy, report, stats, list, scenario."""
