"""Stage 3: decode a cache split with a trained decoder, score the outputs, write a report.

``evaluate.run(cfg)`` is the entry (``stage.py``); the other modules each do one job: ``config``
(EvalConfig), ``resolve`` (run, checkpoint, split, fit), ``data`` (the rows of a task), ``batches``
(every row decoded in batches), ``score`` (one setting: candidates, rerank, refine, metrics), ``report``
(the files and the printed table), ``sweep`` (--sweep grids), ``invert`` (``sgdd invert``).

The cache's ``kind`` decides the task:

    sentences  reconstruction: sentence vector -> its sentence    BLEU, exact match, token accuracy, ...
    pairs      paraphrase: source vector -> the target sentence   BLEU to reference and to source, iBLEU, ...
    windows    MTP head: base-LM hidden state -> next L tokens     per-position accuracy, acceptance length

Writes into ``<run>/eval-<split>/`` (or ``cfg.out``):

- ``report.json``     per setting (one, or one per ``--sweep`` combination): metrics, decoding
                      settings, forward passes, throughput, peak memory, reranking gain, the
                      metrics after each refinement round; and which run / checkpoint / weights /
                      cache / split, the time input's schedule and the run's validation masked
                      accuracy (the figure comparable with Xiao 2026's 81.3%)
- ``report.md``       the same as tables, the plots, trajectories and a few samples
- ``samples.jsonl``   one line per row: id, reference, output (+ source, candidates); with a sweep
                      ``samples-<k>.jsonl`` per setting k = 1, 2, ...
- ``trajectories.txt`` / ``trajectory.png``  which token was committed at which step, for a few rows
- ``quality_vs_steps.png``, ``quality_vs_speed.png``  with a sweep
- ``eval-config.yaml`` the resolved EvalConfig (run, shards, split and out filled in)

The reference of a row is its cached token ids turned back into text by the same
``tokens_to_text`` as the outputs, so a decoder that reproduces the tokens scores 100.
"""

from sgdd.stages.evaluate.stage import run

__all__ = ["run"]
