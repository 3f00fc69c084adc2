"""`pronlm plan`: what a recipe will cost, before anything is downloaded.

The real model is built on the meta device (`phi4_config.real_config`: no memory, no download) and
wrapped as the strategy trains it, so parameters and dtypes are counted from the module tree; tokens
are counted with o200k on the corpus's clips, or on SpeechOcean762's shipped length distribution
(`pronlm.data.lengths`). Memory and FLOPs are estimates from stated formulas (`ASSUMPTIONS`).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import torch

from pronlm.config import PROMPT_LAYOUTS, Config
from pronlm.data.lengths import (
    SPEECHOCEAN762_UTTERANCES,
    ExampleLength,
    corpus_lengths,
    distribution_lengths,
    o200k,
)
from pronlm.data.prompts import AUDIO_PLACEHOLDER, PAPER_TASKS, PromptSet
from pronlm.data.targets import AccentPolicy
from pronlm.model.adapters import AUDIO_ENCODER, LM_LORA_TARGETS, SPEECH_PROJECTOR, training_dtypes
from pronlm.model.checkpoints import ADAM_BYTES, ADAPTER_BYTES, run_checkpoint_bytes
from pronlm.model.phi4_config import real_config
from pronlm.model.quantize import quantisable_linears
from pronlm.model.sampler import EpochSampler

SPEECH_LORA = {"r": 320, "lora_alpha": 640, "lora_dropout": 0.01}  # the shipped speech-lora (SPEC §2)
GPUS = {"A100 80GB": 312e12, "H100 SXM": 989e12, "H200": 989e12}  # dense bf16 peak FLOP/s, no sparsity
MFU = 0.40  # model FLOPs utilisation assumed for the hours
BYTES = {"fp32": 4, "float32": 4, "bfloat16": 2, "float16": 2, "nf4": 0.5 + 1 / 64 + 4 / (64 * 256)}  # nf4: double-quant state
CHECKPOINT_EXTRA = 16e6  # tokenizer files (o200k's tokenizer.json ≈ 15 MB), trainer/scheduler/RNG state
ASSUMPTIONS = {
    "weights": "frozen parameters in the recipe's dtype (bf16), trainable in fp32 (the optimizer's master "
               "weights, no second copy); 4-bit linears 0.5 byte + double-quantised absmax (1/64 + 4/16384 byte)",
    "gradients": "4 bytes per trainable parameter",
    "optimizer": "AdamW: 2 fp32 states (8 bytes) per trainable parameter",
    "activations": "bf16, per language-model layer and token: 16h + 4kv + 8i + 8r bytes (norm inputs kept in fp32, "
                   "linear inputs, q/k/v, attention output, gate_up output, SiLU output, LoRA's r-wide "
                   "intermediates) + 3 bytes per LoRA input with dropout > 0; flash/memory-efficient attention "
                   "(no s^2 scores). Checkpointing keeps each layer's input (2h) and recomputes one layer at a "
                   "time. Logits: 12 bytes per vocabulary row per answer token (bf16 logits, fp32 log-softmax, "
                   "its fp32 and bf16 gradients; the trainer asks for logits only where a label is), the longest "
                   "answer x the batch. Unfreeze: the audio encoder's blocks (not checkpointed) at "
                   "34·h_a + 5·heads·T_a bytes per audio position (Korthikanti et al. 2022). At the longest "
                   "example x the per-device batch: the sampler puts that batch first",
    "flops": "6·N per token (forward 2N, backward 4N; frozen weights skip weight gradients, 2N, and checkpointing "
             "recomputes the forward, 2N: the same 6N) over every position including padding, N = the language "
             "model's layers + LoRA; + 6·lm_head (tied, still a matmul) per answer token, the only positions "
             "whose logits the trainer asks for; + attention 12·L·h·w per position (PaLM, "
             "w = the batch's width); + the audio encoder, 2·N_enc (frozen: forward only) or 6·N_enc per audio token",
    "predict": "weights as loaded (base bf16, adapter fp32), KV cache 2·L·kv·2 bytes per position for prompt + "
               "max_new_tokens, prefill temporaries 12·i bytes per position",
}


def meta_model(cfg: Config):
    """The recipe's model on the meta device, wrapped as `prepare_for_training` wraps it; (peft model, quantised)."""
    from peft import LoraConfig, get_peft_model
    from transformers import Phi4MultimodalForCausalLM

    with torch.device("meta"):
        if cfg.is_tiny:
            from pronlm.model.tiny import build_tiny_tokenizer, tiny_config

            config = tiny_config(build_tiny_tokenizer(), cfg.tiny_hidden_size, cfg.tiny_layers)
        else:
            config = real_config()
        model = Phi4MultimodalForCausalLM(config)
    rows = config.vocab_size
    tokens = {"embed_tokens": [rows - 2, rows - 1]}  # two control-token rows; tied: lm_head shares the delta
    lora = SPEECH_LORA if cfg.strategy in ("speech-lora", "unfreeze") else \
        {"r": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.lora_dropout}
    quantised = quantisable_linears(model) if cfg.quantize_4bit else []
    lcfg = LoraConfig(**lora, target_modules=LM_LORA_TARGETS, trainable_token_indices=tokens, task_type="CAUSAL_LM",
                      modules_to_save=[AUDIO_ENCODER, *SPEECH_PROJECTOR] if cfg.strategy == "unfreeze" else None)
    with torch.device("meta"):
        return get_peft_model(model, lcfg), quantised, lora


def parameter_counts(model, quantised, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Trainable and frozen parameters by dtype, and the groups `flops` needs."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = training_dtypes(model, quantised, dtype)
    assert frozen.pop("fp32", 0) == trainable  # training_dtypes' rule: every trainable parameter fp32
    groups = Counter()
    for name, p in model.named_parameters():
        if "lora_" in name:
            groups["lora"] += p.numel()
        elif "embed_tokens_extend" in name and AUDIO_ENCODER in name and "original_module" not in name:
            groups["audio encoder"] += p.numel()
        elif ".layers." in name and "embed_tokens_extend" not in name:
            groups["language model layers"] += p.numel()
    base = model.get_base_model()
    config = base.config
    groups["lm_head"] = config.vocab_size * config.hidden_size
    groups["total (base)"] = sum(p.numel() for n, p in base.named_parameters()
                                 if not any(k in n for k in ("lora_", "trainable_tokens", "modules_to_save")))
    return {"trainable": trainable, "trainable_by_dtype": {"fp32": trainable},
            "frozen_by_dtype": {k: v for k, v in frozen.items() if v}, "groups": dict(groups)}


def example_lengths(cfg: Config) -> tuple[list[ExampleLength], str]:
    """Every training example's tokens, and where the clip lengths came from."""
    prompts = PromptSet.from_config(cfg)
    if Path(cfg.corpus).is_dir() and not cfg.data:
        lengths = corpus_lengths(cfg.corpus, cfg.train_split, prompts, cfg.tasks, AccentPolicy(cfg.accent_policy),
                                 cfg.word_boundaries, cfg.limit)
        return lengths, f"{cfg.corpus} ({cfg.train_split}): its own clips"
    n = SPEECHOCEAN762_UTTERANCES.get(cfg.train_split, 2500)
    n = min(n, cfg.limit) if cfg.limit else n
    n = round(n * (1 - cfg.dev_fraction))
    return distribution_lengths(prompts, cfg.tasks, n), (
        f"SpeechOcean762's length distribution (200 clips, every 25th utterance, shipped) for {n} utterances; "
        f"{cfg.corpus} is not a local folder")


def token_counts(lengths: list[ExampleLength], batch: int, seed: int, group: bool) -> dict:
    """Tokens per epoch by task and part; padded positions under the training sampler's batches."""
    per_task = {}
    for task in dict.fromkeys(e.task for e in lengths):
        mine = [e for e in lengths if e.task == task]
        per_task[task] = {"examples": len(mine), **{part: sum(getattr(e, part) for e in mine)
                                                    for part in ("prompt", "audio", "answer")}}
    totals = [e.total for e in lengths]
    sampler = EpochSampler(totals, batch, seed, group)
    order = sampler.order()
    widths = [max(totals[i] for i in order[k:k + batch]) for k in range(0, len(order), batch)]
    sizes = [len(order[k:k + batch]) for k in range(0, len(order), batch)]
    return {"per_task": per_task, "tokens": sum(totals), "padding_share": sampler.padding_share(),
            "positions": sum(w * s for w, s in zip(widths, sizes)), "batch_widths": widths, "batch_sizes": sizes,
            "longest": max(totals), "longest_prompt": max(e.prompt + e.audio for e in lengths),
            "longest_answer": max(e.answer for e in lengths)}


def activation_bytes(cfg: Config, config, lora: dict, batch: int, width: int, audio: int, answer: int) -> dict:
    """Activation memory at `batch` sequences of `width` tokens, `answer` of them labels
    (`ASSUMPTIONS["activations"]`)."""
    h, i, layers, vocab = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    kv = config.num_key_value_heads * h // config.num_attention_heads
    per_layer = 16 * h + 4 * kv + 8 * i + 8 * lora["r"] + (3 * (3 * h + i) if lora["lora_dropout"] else 0)
    tokens = batch * width
    layer_bytes = per_layer * tokens
    lm = (2 * h * layers + per_layer) * tokens if cfg.gradient_checkpointing else layer_bytes * layers
    logits = 12 * vocab * batch * answer
    encoder = 0
    if cfg.strategy == "unfreeze":
        a = config.audio_config
        encoder = a.num_blocks * batch * audio * (34 * a.hidden_size + 5 * a.num_attention_heads * audio)
    return {"per_layer_per_token": per_layer, "language_model": lm, "logits": logits, "audio_encoder": encoder,
            "total": lm + logits + encoder}


def training_flops(counts: dict, config, tokens: dict, unfreeze: bool) -> float:
    """FLOPs of one epoch (`ASSUMPTIONS["flops"]`)."""
    g = counts["groups"]
    n_lm = g["language model layers"] + g["lora"]
    attention = sum(12 * config.num_hidden_layers * config.hidden_size * w * w * s
                    for w, s in zip(tokens["batch_widths"], tokens["batch_sizes"]))
    audio = sum(t["audio"] for t in tokens["per_task"].values())
    answers = sum(t["answer"] for t in tokens["per_task"].values())
    return (6 * n_lm * tokens["positions"] + 6 * g["lm_head"] * answers + attention
            + (6 if unfreeze else 2) * g["audio encoder"] * audio)


def prefix_cache(cfg: Config) -> dict:
    """Tokens a prefix cache (vLLM's) can reuse across requests of one task: those before the audio.

    The paper's layout puts the audio right after `<|user|><|APA|>`; instructions first shares everything
    but `<|end|><|assistant|>`. Prefill saved per 1,000 requests = 1,000 x the difference; `shared`: under
    the recipe's own `prompt_layout`.
    """
    counter = o200k()
    layouts = {layout: PromptSet.from_templates(cfg.apa_template, cfg.mdd_template, cfg.wrd_template, layout)
               for layout in PROMPT_LAYOUTS}
    out = {}
    for task in (t for t in cfg.tasks if t in PAPER_TASKS):  # the word task's prompt holds each sentence's words
        before = {layout: counter.count(p.for_task(task).split(AUDIO_PLACEHOLDER)[0]) for layout, p in layouts.items()}
        paper, first = before["paper"], before["instructions-first"]
        out[task] = {"shared_paper": paper, "shared_instructions_first": first, "shared": before[cfg.prompt_layout],
                     "prefill_saved_per_1000_requests": 1000 * (first - paper)}
    return out


def training_memory_at(cfg: Config, bill: dict, batch: int, width: int, audio: int, answer: int) -> float:
    """The plan's training memory for another batch shape (`benchmarks/bench_gpu.py` measures its own)."""
    lora = SPEECH_LORA if cfg.strategy in ("speech-lora", "unfreeze") else \
        {"r": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.lora_dropout}
    mem = bill["training_memory"]
    act = activation_bytes(cfg, real_config(), lora, batch, width, audio, answer)["total"]
    return mem["weights"] + mem["gradients"] + mem["optimizer"] + act


def weight_bytes(by_dtype: dict) -> float:
    return sum(BYTES[k] * v for k, v in by_dtype.items())


def plan(cfg: Config, predict_batch: int = 8, max_new_tokens: int = 256, mfu: float = MFU) -> dict:
    """The recipe's bill: parameters, training memory, tokens, FLOPs and hours, prediction memory, disk."""
    model, quantised, lora = meta_model(cfg)
    config = model.get_base_model().config
    counts = parameter_counts(model, quantised, torch.float32 if cfg.dtype == "fp32" else torch.bfloat16)
    lengths, source = example_lengths(cfg)
    batch = cfg.per_device_train_batch_size
    tokens = token_counts(lengths, batch, cfg.seed, cfg.group_by_length)
    trainable = counts["trainable"]
    longest_audio = max(e.audio for e in lengths)
    memory = {"weights": weight_bytes(counts["frozen_by_dtype"]) + 4 * trainable, "gradients": 4 * trainable,
              "optimizer": 8 * trainable,
              "activations": activation_bytes(cfg, config, lora, batch, tokens["longest"], longest_audio,
                                              tokens["longest_answer"])}
    memory["total"] = memory["weights"] + memory["gradients"] + memory["optimizer"] + memory["activations"]["total"]
    flops = training_flops(counts, config, tokens, cfg.strategy == "unfreeze")
    epochs = cfg.num_train_epochs
    hours = {gpu: epochs * flops / (peak * mfu) / 3600 for gpu, peak in GPUS.items()}
    kv = config.num_key_value_heads * config.hidden_size // config.num_attention_heads
    context = tokens["longest_prompt"] + max_new_tokens
    base_bf16 = 2 * counts["groups"]["total (base)"]  # predict loads the base unquantised
    predict = {"batch": predict_batch, "max_new_tokens": max_new_tokens, "weights": base_bf16 + 4 * trainable,
               "kv_cache": 2 * config.num_hidden_layers * kv * 2 * predict_batch * context,
               "prefill": 12 * config.intermediate_size * predict_batch * tokens["longest_prompt"]}
    predict["total"] = predict["weights"] + predict["kv_cache"] + predict["prefill"]
    saves = math.ceil(epochs) if cfg.save_strategy == "epoch" else 0
    adapter, optimizer = ADAPTER_BYTES * trainable + CHECKPOINT_EXTRA, ADAM_BYTES * trainable
    final = saves * CHECKPOINT_EXTRA + adapter  # each checkpoint's tokenizer files; the final adapter in output_dir
    disk = {"checkpoints": saves, "adapter": adapter, "optimizer": optimizer,
            "every_checkpoint_with_optimizer": run_checkpoint_bytes(trainable, saves, slim=False) + final,
            "latest_checkpoint_with_optimizer": run_checkpoint_bytes(trainable, saves, slim=True) + final}
    return {"recipe": {"base": cfg.base, "strategy": cfg.strategy, "lora_r": lora["r"], "quantize_4bit":
                       cfg.quantize_4bit, "per_device_train_batch_size": batch, "gradient_checkpointing":
                       cfg.gradient_checkpointing, "epochs": epochs, "prompt_layout": cfg.prompt_layout},
            "parameters": counts, "training_memory": memory, "corpus": source, "tokens_per_epoch": {
                k: v for k, v in tokens.items() if k not in ("batch_widths", "batch_sizes")},
            "flops_per_epoch": flops, "mfu": mfu, "peak_flops": GPUS, "hours": hours, "predict_memory": predict,
            "disk": disk, "prefix_cache": prefix_cache(cfg), "assumptions": ASSUMPTIONS}


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def format_plan(p: dict) -> str:
    """The plan as the terminal shows it."""
    r, par, mem, tok = p["recipe"], p["parameters"], p["training_memory"], p["tokens_per_epoch"]
    act, pred, disk = mem["activations"], p["predict_memory"], p["disk"]
    lines = [f"plan: {r['base']}, strategy {r['strategy']} (LoRA r {r['lora_r']}"
             + (", 4-bit" if r["quantize_4bit"] else "") + f"), batch {r['per_device_train_batch_size']}, "
             f"checkpointing {'on' if r['gradient_checkpointing'] else 'off'}, {r['epochs']:g} epochs",
             f"parameters: {par['trainable']:,} trainable (fp32), frozen "
             + ", ".join(f"{n:,} {k}" for k, n in par["frozen_by_dtype"].items()),
             f"training memory, one GPU: {gb(mem['total'])} = weights {gb(mem['weights'])} + gradients "
             f"{gb(mem['gradients'])} + AdamW {gb(mem['optimizer'])} + activations {gb(act['total'])} "
             f"(layers {gb(act['language_model'])}, logits {gb(act['logits'])}, audio encoder "
             f"{gb(act['audio_encoder'])}; at {tok['longest']} tokens x {r['per_device_train_batch_size']}, logits at "
             f"{tok['longest_answer']} answer tokens x {r['per_device_train_batch_size']})",
             f"tokens per epoch ({p['corpus']}):"]
    for task, t in tok["per_task"].items():
        lines.append(f"  {task}: {t['examples']:,} examples, prompt {t['prompt']:,}, audio {t['audio']:,}, "
                     f"answer {t['answer']:,} (<|end|><|endoftext|> included)")
    lines += [f"  {tok['tokens']:,} tokens, {tok['positions']:,} positions with padding "
              f"({100 * tok['padding_share']:.1f} % padding)",
              f"training FLOPs per epoch: {p['flops_per_epoch']:.3g}; hours for {r['epochs']:g} epochs at "
              f"{100 * p['mfu']:.0f} % MFU: " + ", ".join(
                  f"{gpu} {h:.2f} h ({p['peak_flops'][gpu] / 1e12:.0f} TFLOP/s bf16)" for gpu, h in p["hours"].items()),
              f"predict, batch {pred['batch']}, {pred['max_new_tokens']} new tokens: {gb(pred['total'])} "
              f"(weights {gb(pred['weights'])}, KV cache {gb(pred['kv_cache'])}, prefill {gb(pred['prefill'])})",
              f"disk: {disk['checkpoints']} checkpoints of {gb(disk['adapter'])} adapter + {gb(disk['optimizer'])} "
              f"optimizer state: {gb(disk['every_checkpoint_with_optimizer'])} when every checkpoint keeps the "
              f"optimizer, {gb(disk['latest_checkpoint_with_optimizer'])} when only the latest does",
              f"prefix cache, tokens every request of a task shares (paper layout -> instructions first; this "
              f"recipe: prompt_layout={r['prompt_layout']}): " + ", ".join(f"{t} {c['shared_paper']} -> {c['shared_instructions_first']} "
                          f"({c['prefill_saved_per_1000_requests']:,} prefill tokens saved per 1,000 requests)"
                          for t, c in p["prefix_cache"].items()),
              "how each figure is estimated: pronlm plan --format json (\"assumptions\")"]
    return "\n".join(lines)


README_RECIPES = (("paper-lora", {}), ("paper-unfreeze", {}), ("new-lora", {}), ("new-lora", {"quantize_4bit": True}),
                  ("tiny-cpu", {}))


def readme_table(rows: list[tuple[str, dict, Config, dict]]) -> str:
    """The README's recipe table: (recipe, overrides, config, plan) per row."""
    out = ["| recipe | what trains | lr | trainable | GPU memory, training (batch 8) | GPU memory, predict "
           "(batch 8) | hours for 4 epochs, A100 / H100 (40 % MFU) | disk per run (latest / every checkpoint "
           "with optimizer) |", "|---|---|---|---|---|---|---|---|"]
    for name, overrides, cfg, p in rows:
        r, mem, disk, hours = p["recipe"], p["training_memory"], p["disk"], p["hours"]
        what = ("the shipped speech LoRA" if r["strategy"] in ("speech-lora", "unfreeze") else "a new LoRA") + \
            f" r {r['lora_r']}" + (" + audio encoder + projector" if r["strategy"] == "unfreeze" else "") + \
            (", LM in 4-bit" if r["quantize_4bit"] else "") + " + 2 token rows"
        shown = f"`{name}`" + "".join(f" `{k}={str(v).lower()}`" for k, v in overrides.items())
        out.append(f"| {shown} | {what} | {cfg.learning_rate:g} | {p['parameters']['trainable'] / 1e6:.1f} M | "
                   f"{gb(mem['total'])} | {gb(p['predict_memory']['total'])} | {hours['A100 80GB']:.2f} / "
                   f"{hours['H100 SXM']:.2f} | {gb(disk['latest_checkpoint_with_optimizer'])} / "
                   f"{gb(disk['every_checkpoint_with_optimizer'])} |")
    return "\n".join(out)
