"""Entry points: parse options, build the pipeline from `transforms`, run it, report."""

from beam_jobs import logs

# Before any entry point imports Beam: its import-time warnings stay off the terminal.
logs.hold()
