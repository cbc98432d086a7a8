"""Stage 2: train the conditional masked-diffusion decoder (or MTP head) from a cache. The encoder
or base model is never loaded: token ids, condition vectors, the embedding matrix, the LM head
and the special ids all come from the cache.

Run directory (``cfg.out``, default ``runs/<cfg.name or cache directory name>``)::

    config.yaml                  the TrainConfig as given, written when training starts
    encoder/                     tokenizer files, encoder.json and cache.json copied from the cache
                                 (decoding and invert need nothing else; see sgdd.models.portable)
    metrics.jsonl                one JSON object per log line and one per validation
    checkpoints/last/            model.safetensors (+ ema.safetensors) + model.json + trainer.pt
    checkpoints/best/            model.safetensors (+ ema.safetensors) + model.json (lowest
                                 validation loss so far; a copy of last without validation)
    tensorboard/                 only with --report-to tensorboard

Every save writes a whole checkpoint directory under a temporary name, then renames it into
place; a run killed between the two renames is repaired when it resumes.

Determinism: the model is initialised from ``seed_everything(cfg.seed)``; the data order comes from
a generator seeded by ``cfg.seed`` and the training noise from one seeded by ``cfg.seed + 1``; both
generators, the torch RNG (of every rank), the optimizer, scheduler, scaler, EMA and step
counters are saved, so a resumed run continues bit for bit like one that was never stopped
(checked with a real SIGKILL in the tests). Validation noise comes from a fresh generator
seeded by ``cfg.seed`` at every validation, so validation losses are comparable.

Resuming refuses a changed config (listing every difference) except the fields in
``rundir.RESUME_MAY_CHANGE``, which do not touch the training computation.

One job per module, bottom up: ``config`` (TrainConfig, OptimConfig), ``trackers``, ``distributed``
(torchrun), ``data`` (what is read from the cache), ``samplers`` (the sample order), ``loss``,
``model`` (the decoder training starts from, ``--init-from``), ``optim`` (AdamW and the LR
schedule), ``state`` (TrainState and trainer.pt), ``rundir`` (checkpoints, config.yaml,
metrics.jsonl), ``step`` (one optimizer step, the validation loss), ``trainer`` (the loop, ``run``).
"""

from sgdd.stages.train.trainer import TrainResult, fit, run

__all__ = ["TrainResult", "fit", "run"]
