"""Speed and memory of the real recipes on one GPU: the full-size Phi-4-multimodal with random weights.

    python benchmarks/bench_gpu.py [--recipes paper-lora paper-unfreeze new-lora] [--steps 10] [--out FILE]
    python benchmarks/bench_gpu.py --smoke        # the same code on a one-layer model, CPU allowed

Nothing is downloaded: the model is built from `pronlm.model.phi4_config` (the real config) with random
weights, since step time and memory do not depend on the values. For each recipe it builds the
strategy's adapter with pronlm's own code (LoRA config, fp32 master weights, gradient checkpointing),
then measures at the recipe's per-device batch, on sequences of the paper's lengths (APA ≈ 350 prompt
+ 54 audio + 24 answer tokens, MDD ≈ 140 + 54 + 42): training step time, tokens/s, model FLOPs
utilisation (6 · parameters · tokens, PaLM's convention) and peak GPU memory; then batched greedy
generation throughput; beside the peak memory, `pronlm plan`'s estimate at the same batch. Without CUDA (and
without --smoke) it says so and exits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from pronlm.config import load_config
from pronlm.model.adapters import parameter_table, speech_lora_config, upcast_trainable
from pronlm.model.load import attention_implementation
from pronlm.model.phi4_config import AUDIO_TOKEN_ID, real_config
from pronlm.model.train import answer_logits_only

# Dense bf16 peak of common GPUs (TFLOP/s, no sparsity), for MFU.
PEAK_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "A10": 125, "RTX 4090": 165}
AUDIO_TOKENS = 54  # a 4.3 s clip, SpeechOcean762's mean (one audio token per 80 ms)
LENGTHS = {"apa": (350, 24), "mdd": (140, 42)}  # prompt text tokens, answer tokens


def synthetic_batch(batch_size: int, device) -> dict:
    """Half APA, half MDD rows of the paper's lengths, right-padded, labels on the answers only."""
    rows = []
    for i in range(batch_size):
        prompt, answer = LENGTHS["apa" if i % 2 == 0 else "mdd"]
        ids = torch.randint(0, 199_000, (prompt + AUDIO_TOKENS + answer,))
        ids[4:4 + AUDIO_TOKENS] = AUDIO_TOKEN_ID
        labels = torch.full_like(ids, -100)
        labels[-answer:] = ids[-answer:]
        rows.append((ids, labels))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((batch_size, width), 199_999)
    labels = torch.full((batch_size, width), -100)
    mask = torch.zeros((batch_size, width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, :len(ids)], labels[i, :len(ids)], mask[i, :len(ids)] = ids, lab, 1
    frames = AUDIO_TOKENS * 8
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device),
            "audio_input_features": torch.randn(batch_size, frames, 80, device=device),
            "audio_embed_sizes": torch.full((batch_size,), AUDIO_TOKENS, device=device),
            "audio_attention_mask": torch.ones(batch_size, frames, dtype=torch.bool, device=device)}


def build(recipe: str, device, smoke: bool, speech_dir: str):
    """The base with random weights in bf16, wrapped as the recipe's strategy."""
    from transformers import Phi4MultimodalForCausalLM

    config = real_config(1, 1, 1) if smoke else real_config()
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    with torch.device(device):
        model = Phi4MultimodalForCausalLM._from_config(config, dtype=dtype,
                                                       attn_implementation=attention_implementation("auto"))
    cfg = load_config(recipe, {"speech_adapter": speech_dir})
    token_ids = [200_029, 200_030]
    if cfg.strategy == "new-lora":  # the merged speech LoRA changes no shape: train a fresh LoRA directly
        from peft import LoraConfig, get_peft_model

        from pronlm.model.adapters import LM_LORA_TARGETS, _token_indices

        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=LM_LORA_TARGETS, trainable_token_indices=_token_indices(model, token_ids),
                          task_type="CAUSAL_LM")
        peft = upcast_trainable(get_peft_model(model, lcfg))
    else:
        from peft import get_peft_model

        peft = upcast_trainable(get_peft_model(model, speech_lora_config(cfg, model, token_ids, speech_dir)))
    if cfg.gradient_checkpointing:
        peft.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        peft.enable_input_require_grads()
    return cfg, peft


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_steps(model, cfg, device, steps: int, batch_size: int) -> dict:
    """Forward + backward + AdamW step, bf16 autocast; the mean of `steps` after two warm-up steps."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, fused=device.type == "cuda")
    batch = synthetic_batch(batch_size, device)
    model.train()
    times = []
    for step in range(steps + 2):
        sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(**answer_logits_only(batch)).loss  # as the trainer asks: logits at the answers
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if step >= 2:
            times.append(time.perf_counter() - t0)
    seconds = sum(times) / len(times)
    tokens = int(batch["attention_mask"].sum())
    return {"step_s": seconds, "tokens_per_s": tokens / seconds, "tokens_per_step": tokens}


@torch.inference_mode()
def generation(model, device, batch_size: int, new_tokens: int) -> dict:
    """Greedy generation of `new_tokens` for a batch of MDD-length prompts."""
    model.eval()
    batch = synthetic_batch(batch_size, device)
    batch.pop("labels")
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=199_999)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        model.generate(**batch, max_new_tokens=2, do_sample=False, pad_token_id=199_999)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        model.generate(**batch, **kwargs)
        sync(device)
    seconds = time.perf_counter() - t0
    return {"batch": batch_size, "new_tokens_per_s": batch_size * new_tokens / seconds,
            "answers_per_s": batch_size / seconds}


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def run(recipe: str, device, a) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    cfg, model = build(recipe, device, a.smoke, a.speech_dir)
    table = parameter_table(model)
    batch_size = 1 if a.smoke else cfg.per_device_train_batch_size  # the recipe's per-device batch
    row = {"recipe": recipe, "trainable_M": table["trainable"] / 1e6, "batch": batch_size,
           **train_steps(model, cfg, device, a.steps, batch_size)}
    n_params = table["total"] - sum(p.numel() for n, p in model.named_parameters() if "modules_to_save" in n)
    row["model_tflops_per_s"] = 6 * n_params * row["tokens_per_s"] / 1e12
    if not a.smoke:  # the plan's estimate at this benchmark's batch: prompts and answers of LENGTHS, 54 audio tokens
        from pronlm.model.plan import plan, training_memory_at

        width = max(prompt + AUDIO_TOKENS + answer for prompt, answer in LENGTHS.values())
        answer = max(answer for _, answer in LENGTHS.values())
        row["plan_gib"] = training_memory_at(cfg, plan(cfg), batch_size, width, AUDIO_TOKENS, answer) / 2**30
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        peak = a.peak_tflops or peak_tflops(torch.cuda.get_device_name())
        row["mfu"] = row["model_tflops_per_s"] / peak if peak else None
    row["generation"] = [generation(model, device, b, a.new_tokens) for b in a.gen_batches]
    del model
    return row


def write_speech_lora(folder: str) -> None:
    """An adapter_config.json as the shipped speech-lora's (r 320, alpha 640): the strategy reads its r."""
    from peft import LoraConfig

    LoraConfig(r=320, lora_alpha=640, lora_dropout=0.01, task_type="CAUSAL_LM",
               target_modules=r"model.layers.\d+.((self_attn.(qkv|o)_proj)|(mlp.(gate_up|down)_proj))",
               ).save_pretrained(folder)


def main():
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipes", nargs="+", default=["paper-lora", "paper-unfreeze", "new-lora"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--gen-batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, when not in the built-in list")
    p.add_argument("--smoke", action="store_true", help="one layer per tower; runs on CPU too (checks the script)")
    p.add_argument("--out", help="also write the rows as JSON here")
    a = p.parse_args()
    if not torch.cuda.is_available() and not a.smoke:
        print("bench_gpu: no CUDA GPU here; this benchmark measures the real recipes on a GPU "
              "(--smoke runs the same code on a one-layer model on CPU)")
        sys.exit(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if a.smoke:
        a.steps, a.gen_batches, a.new_tokens = 1, [1], 2
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    with tempfile.TemporaryDirectory() as tmp:
        a.speech_dir = tmp
        write_speech_lora(tmp)
        rows = [run(r, device, a) for r in a.recipes]
    print(f"device: {name}, torch {torch.__version__}, attention {attention_implementation('auto')['']}")
    print("| recipe | trainable | batch | step (s) | tokens/s | MFU | peak GPU mem | pronlm plan's estimate | "
          "generation, answers/s (batch) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gen = ", ".join(f"{g['answers_per_s']:.1f} ({g['batch']})" for g in r["generation"])
        mfu = f"{100 * r['mfu']:.0f} %" if r.get("mfu") else "-"
        mem = f"{r['peak_gib']:.1f} GiB" if "peak_gib" in r else "-"
        planned = f"{r['plan_gib']:.1f} GiB" if "plan_gib" in r else "-"
        print(f"| {r['recipe']} | {r['trainable_M']:.0f} M | {r['batch']} | {r['step_s']:.2f} | {r['tokens_per_s']:.0f} | {mfu} "
              f"| {mem} | {planned} | {gen} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"device": name, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
