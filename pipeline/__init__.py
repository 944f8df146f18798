"""rx training pipeline, grouped by job: `data/` (records, baselines, knowledge, teachers, distillation), `model/`
(tokenizer, models, decoding, scoring, shared training helpers), `stages/` (one module per trained stage),
`release/` (export, unpack, card, ship); at the top the config, the run folder, metrics, the evaluator, the stage
table (`run`) and the command line (`cli`). Imports point downward only (tests/pipeline/test_layout.py)."""
