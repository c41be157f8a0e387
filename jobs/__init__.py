"""jobs: job files and their schema, the sfp-label CLI, benchmark vocabularies, scheduling helpers."""
