"""Launchers: start the processes a plan runs on, follow them, and end them whatever happens."""
