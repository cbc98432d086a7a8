"""Stage 1, `sgdd collect`: a frozen encoder or causal LM over a corpus, once, into the cache.

``config`` (CollectConfig), ``sources`` (corpora -> records), ``modes`` (what each kind of
cache computes), ``loop`` (splits -> committed shards -> manifest), ``ranks`` (torchrun).
"""

from sgdd.stages.collect.loop import run

__all__ = ["run"]
