"""The results floor: per-shard partials, their aggregation into a run's report (tables, upper bound,
best cells, heatmaps), the report's renderings, lm-eval-style results, and history across runs with
paired tests. Imports neither torch nor transformers."""
