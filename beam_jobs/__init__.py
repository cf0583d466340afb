"""Entry points: parse options, build the pipeline from `transforms`, run it, report."""
