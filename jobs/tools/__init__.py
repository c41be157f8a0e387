"""Output tools: `show`, `export`, `eval` and `render`, each reading outputs through `pipeline.LabelledOutput`."""
