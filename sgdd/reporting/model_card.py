"""The model card (README.md) of a saved run: encoder, data, recipe and evaluation metrics, with
the Hub's YAML header (library, tags, base model)."""

from __future__ import annotations

import yaml


def _header(encoder: dict) -> str:
    head = {"library_name": "sgdd", "tags": ["sgdd", "masked-diffusion", "text-generation", "embedding-inversion"]}
    model = encoder.get("model")
    if model and "/" in model and not model.startswith(("/", ".")):
        head["base_model"] = model
    return "---\n" + yaml.safe_dump(head, sort_keys=False) + "---\n"


def _metrics(report: dict) -> list[str]:
    lines = [f"Evaluated on split `{report.get('split')}` ({report.get('task')}, {report.get('n')} {report.get('unit')}), "
             f"{report.get('weights')} weights of the `{report.get('checkpoint')}` checkpoint, settings "
             f"`{report.get('settings', {}).get('sampler')}` in {report.get('settings', {}).get('steps')} steps:", "",
             "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, (int, float)) else f"| {k} | {v} |"
              for k, v in report.get("metrics", {}).items()]
    return lines


def model_card(meta: dict, encoder: dict, cache_info: dict, report: dict | None, config_yaml: str | None) -> str:
    """README.md text for a saved run."""
    view = meta.get("view", "sentence")
    what = ("an MTP head: it predicts the next block of a causal LM's tokens from one hidden state"
            if view == "next_block" else "a sentence decoder: it turns a sentence vector back into text")
    dec = meta.get("decoder", {})
    lines = [
        _header(encoder),
        "# sgdd conditional masked-diffusion decoder", "",
        f"This is {what}, trained with sgdd by masked diffusion on a precomputed embedding cache.", "",
        "## Use", "",
        "```python", "import sgdd", "", 'run = sgdd.load_run("<this repository or folder>")',
    ]
    lines += (['print(run.invert(["the cat sat on the mat."]))      # needs the encoder below']
              if view != "next_block" else ["print(run.decode(hidden_states))  # [N, %d]" % meta.get("cond_dim", 0)])
    lines += ["```", "", "## Encoder", "",
              f"- model: `{encoder.get('model')}` ({encoder.get('kind', 'encoder')}, pooling `{encoder.get('pooling')}`"
              f"{', layer ' + str(encoder['layer']) if encoder.get('layer') is not None else ''})",
              f"- weights sha256: `{encoder.get('weights_sha256')}`",
              f"- tokenizer sha256: `{encoder.get('tokenizer_sha256')}` (tokenizer files in `encoder/`)",
              f"- vector size: {meta.get('cond_dim')}, stored as {cache_info.get('vectors_dtype') or 'n/a'}", "",
              "## Data", ""]
    splits = cache_info.get("splits", {})
    lines += [f"- `{name}`: {s.get('rows')} rows ({s.get('kind')})" + (f", source `{s['source']}`" if s.get("source") else "")
              for name, s in splits.items()] or ["- (not recorded)"]
    lines += ["", "## Recipe", "",
              f"- decoder: {dec.get('n_layers')} layers, width {dec.get('d_model')}, {dec.get('n_heads')} heads, "
              f"conditioning `{dec.get('conditioning')}`, at most {dec.get('max_len')} tokens",
              f"- trained for {meta.get('step')} optimizer steps; weights: {meta.get('weights', 'model')}"]
    if config_yaml:
        lines += ["", "<details><summary>training config (config.yaml)</summary>", "", "```yaml",
                  config_yaml.rstrip(), "```", "", "</details>"]
    lines += ["", "## Evaluation", ""]
    lines += _metrics(report) if report else ["No evaluation report was saved with this run (`sgdd eval` writes one)."]
    return "\n".join(lines) + "\n"
