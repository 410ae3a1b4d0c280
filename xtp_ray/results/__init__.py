"""The results floor: per-shard partials, their aggregation into a run's report (tables, upper bound,
best cells, heatmaps), the report's renderings, lm-eval-style results, and history across runs with
paired tests. Imports neither torch nor transformers.

`partials` (per-shard partial aggregates, in each shard's footer), `aggregation` (a run's report from its
shards' partials), `rows` (the plain pandas definition over every row: the tests' reference), `tables`
(per-language summaries to a task's table), `stats` (order-free means and spreads), `scaling` (the paper's
offline scaling table), `leftout` (rows left out: errors.jsonl, the counts, the report's section), `report`
(Markdown, HTML, figures), `markup` (the HTML table both the report and the left-out section draw), `lmeval`
(report/results.json in lm-evaluation-harness's shape), `history`
(trends across runs: `xtp history`), `paired` (McNemar, Holm, Wilson), `synthetic` (realistic shards for
tests and the results benchmark)."""
