"""Small readers of finished runs and studies (`python -m experiments.tools.<name>`)."""
