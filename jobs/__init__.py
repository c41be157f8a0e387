"""jobs: the user's side of the project.

jobfile/   job files: schema, loading, resolving into a pipeline.LabelRequest, placement on a cluster
cli/       the `sfp-label` command line, the only place that knows exit codes
tools/     show, export, eval and render: reading finished outputs
*.yaml     shipped jobs (the benchmark presets, the demo, a bucket template)
vocab/     class lists of the standard benchmarks
"""
