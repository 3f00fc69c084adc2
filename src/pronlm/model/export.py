"""`pronlm export`: a trained checkpoint as one standalone model folder, optionally pushed to the hub.

Owns merging a checkpoint (its LoRA and its control-token rows) into the base, the two folder layouts
and their checks, the model card, and the upload:
- `transformers` (default): `Phi4MultimodalForCausalLM.from_pretrained(DIR)` loads it with no peft, and
  pronlm uses it as a base (`pronlm predict base=DIR`): it carries the run's config.yaml and prompts.
- `vllm`: vLLM implements Phi-4-multimodal only in Microsoft's original remote-code layout
  (`Phi4MMForCausalLM`, SPEC §2), whose loader drops every LoRA weight: the merged weights are written
  under the original names (the inverse of transformers' conversion script), beside the original
  config, processor and remote-code files.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path

import torch

from pronlm.config import EXPORT_FILE, Config, ConfigError
from pronlm.data.prompts import CONTROL_TOKENS, render_prompt
from pronlm.errors import PronlmError
from pronlm.run import TABLE_MD, Run
from pronlm.model.load import check_adapter_folder, load_feature_extractor, load_model, resolve_base, resolve_dtype

log = logging.getLogger(__name__)

LAYOUTS = ("transformers", "vllm")
ORIGINAL_REVISION = "main"  # the hub repo's main branch: Microsoft's remote-code layout (native: refs/pr/70)
# Keys a merged folder must not hold: peft's LoRA, token-delta and saved-module wrappers.
ADAPTER_KEY_PARTS = ("lora_", "trainable_tokens", "token_adapter", "modules_to_save", "original_module",
                     "base_model.model.")
# transformers' convert_phi4_multimodal_weights_to_hf.py (STATE_DICT_MAPPING) renames these original
# module names; each entry here is one of its rules turned round: (native pattern, original name).
_BLOCK = r"^(model\.embed_tokens_extend\.audio_embed\.encoder\.encoders\.\d+)"
_AUDIO, _IMAGE = "model.embed_tokens_extend.audio_embed.", "model.embed_tokens_extend.image_embed."
TO_ORIGINAL = [
    (_BLOCK + r"\.feed_forward_(in|out)\.gate_up_proj\.", r"\1.feed_forward_\2.net.0.linear."),
    (_BLOCK + r"\.feed_forward_(in|out)\.down_proj\.", r"\1.feed_forward_\2.net.2."),
    (_BLOCK + r"\.self_attn\.(q|k|v)_proj\.", r"\1.self_attn.linear_\2."),
    (_BLOCK + r"\.self_attn\.o_proj\.", r"\1.self_attn.linear_out."),
    ("^" + re.escape(_IMAGE + "img_projection_up."), _IMAGE + "img_projection.0."),
    ("^" + re.escape(_IMAGE + "img_projection_down."), _IMAGE + "img_projection.2."),
    ("^" + re.escape(_IMAGE + "global_img_feature_extensor") + "$", _IMAGE + "glb_GN"),
    ("^" + re.escape(_IMAGE + "sub_img_feature_extensor") + "$", _IMAGE + "sub_GN"),
    ("^" + re.escape(_AUDIO + "up_proj_for_speech."), _AUDIO + "audio_projection.speech.0."),
    ("^" + re.escape(_AUDIO + "down_proj_for_speech."), _AUDIO + "audio_projection.speech.2."),
    ("^" + re.escape(_AUDIO + "up_proj_for_vision_speech."), _AUDIO + "audio_projection.vision.0."),
    ("^" + re.escape(_AUDIO + "down_proj_for_vision_speech."), _AUDIO + "audio_projection.vision.2."),
]
# The original model wraps these LM projections in its speech/vision LoRA: their weight is `…base_layer.weight`.
ORIGINAL_LORA_MODULES = r"^model\.layers\.\d+\.(self_attn\.(qkv_proj|o_proj)|mlp\.(gate_up_proj|down_proj))\.weight$"
# What the vllm layout takes from the original repo: every top-level config, code and tokenizer file.
ORIGINAL_FILES = ["*.json", "*.py", "*.txt", "*.jinja", "LICENSE"]
NOT_COPIED = ("model.safetensors.index.json", "README.md")

PAPER = ("Ahn & Nam, \"English Pronunciation Evaluation without Complex Joint Training: LoRA Fine-tuned Speech "
         "Multimodal LLM\", arXiv 2509.02915 (2025)")


class ExportError(PronlmError):
    pass


def export(adapter: str, out: str, layout: str = "transformers", original: str | None = None,
           original_revision: str = ORIGINAL_REVISION, push_to_hub: str | None = None, private: bool = False,
           dtype: str = "auto") -> dict:
    """Merge `adapter` into its base and write the folder `out` in `layout`; returns a summary (also
    written to `out`/pronlm-export.json). `original`: the vllm layout's source of the original files
    (a folder, or a hub id at `original_revision`; default: the run's base)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    run = described_run(adapter)
    cfg = run.config()
    out_dir = claim_out(out)
    t0 = time.perf_counter()
    source = original_folder(original, original_revision, cfg) if layout == "vllm" else None
    model, tokenizer, rows = merged_model(adapter, cfg)
    model = model.to(export_dtype(cfg, dtype))
    out_dir.mkdir(parents=True, exist_ok=True)
    if layout == "transformers":
        save_transformers(model, tokenizer, cfg, out_dir)
    else:
        save_vllm(model, tokenizer, source, out_dir)
    run.copy_description(out_dir)
    summary = {"layout": layout, "adapter": str(Path(adapter).resolve()), "base": cfg.base, "revision": cfg.revision,
               "strategy": cfg.strategy, "original": str(source) if source else None, "dtype": str(model.dtype),
               "control_tokens": rows, "parameters": sum(p.numel() for p in model.parameters()),
               "seconds": round(time.perf_counter() - t0, 2)}
    (out_dir / "README.md").write_text(model_card(cfg, adapter, layout, summary))
    (out_dir / EXPORT_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    summary["bytes"] = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    log.info("exported %s (%s layout) to %s: %.1f MB in %.1f s", adapter, layout, out_dir, summary["bytes"] / 1e6,
             summary["seconds"])
    if push_to_hub:
        summary["url"] = push(out_dir, push_to_hub, private)
    return summary


def described_run(adapter: str) -> Run:
    """The checkpoint's run: an export needs to know the base, strategy and prompts it was trained with."""
    check_adapter_folder(adapter)
    run = Run.of(adapter)
    if run is None:
        raise ExportError(f"{adapter} has no config.yaml (nor its parent): not a checkpoint pronlm train wrote, "
                          "so its base and prompts are unknown")
    return run


def claim_out(out: str) -> Path:
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ExportError(f"--out {out} exists and is not an empty folder: give a new folder")
    return path


def export_dtype(cfg: Config, dtype: str) -> torch.dtype:
    """bf16 for a hub base (its shipped dtype: half the size of fp32), fp32 for the tiny model, else as asked."""
    if dtype != "auto":
        return resolve_dtype(dtype)
    return torch.float32 if cfg.is_tiny else torch.bfloat16


def merged_model(adapter: str, cfg: Config):
    """(plain model, tokenizer, {token: id}) with the LoRA and the control-token rows merged in, on CPU in fp32.

    It loads exactly as `Predictor` does (`load_model`); peft's `merge_and_unload` writes the
    trained rows into the embedding matrix, which the tied lm_head shares.
    """
    model, tokenizer = load_model(cfg, adapter, device="cpu", dtype="fp32")
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in CONTROL_TOKENS.values() if tok in tokenizer.get_vocab()}
    with torch.no_grad():
        trained = model.get_input_embeddings()(torch.tensor(list(ids.values()))).clone()
    model = model.merge_and_unload()
    check_merged(model, trained, list(ids.values()))
    return model, tokenizer, ids


def check_merged(model, trained_rows: torch.Tensor, ids: list[int]) -> None:
    """No adapter wrapper is left, the control-token rows are the trained ones, and a tied head still shares them."""
    leftover = adapter_keys(model.state_dict())
    if leftover:
        raise ExportError(f"merging left {len(leftover)} adapter weights in the model, e.g. {leftover[:3]}")
    embed = model.get_input_embeddings().weight
    if not torch.equal(embed[ids].detach(), trained_rows):
        raise ExportError("the merged embedding does not hold the trained control-token rows")
    if model.config.tie_word_embeddings and model.get_output_embeddings().weight is not embed:
        raise ExportError("the config ties lm_head to the embedding, but the merged model holds two matrices")
    if not model.config.tie_word_embeddings and not torch.equal(model.get_output_embeddings().weight[ids], embed[ids]):
        log.info("lm_head is a separate matrix: its control-token rows are its own trained ones")


def adapter_keys(keys) -> list[str]:
    return sorted(k for k in keys if any(part in k for part in ADAPTER_KEY_PARTS))


def check_saved_keys(folder: Path) -> list[str]:
    """The keys of every safetensors file in `folder`; refuses a LoRA or token-delta key (by name)."""
    from safetensors import safe_open

    keys = []
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            keys += list(f.keys())
    bad = adapter_keys(keys) + [k for k in keys if ".lora" in k]
    if bad or not keys:
        raise ExportError(f"{folder} holds adapter weights, e.g. {bad[:3]}" if bad else f"{folder} holds no weights")
    return keys


def save_transformers(model, tokenizer, cfg: Config, out: Path) -> None:
    """config, generation config, safetensors, tokenizer with the control tokens, the audio feature extractor."""
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    load_feature_extractor(resolve_base(cfg), cfg.revision).save_pretrained(out)
    if not cfg.is_tiny:
        copy_base_files(cfg.base, cfg.revision, out, ("processor_config.json", "chat_template.jinja",
                                                      "chat_template.json"))
    check_saved_keys(out)


def copy_base_files(base: str, revision: str | None, out: Path, names: tuple[str, ...]) -> None:
    """The base's processor files (they need torchvision to load as a processor; copied as they are)."""
    from huggingface_hub import hf_hub_download

    for name in names:
        local = Path(base) / name
        try:
            path = local if local.is_file() else Path(hf_hub_download(base, name, revision=revision))
        except Exception:  # noqa: BLE001 - an optional file the base may not have
            continue
        if not (out / name).exists():
            shutil.copyfile(path, out / name)


def original_key(key: str, lora_modules: set[str] | None = None) -> str:
    """A native (transformers) weight name under the original remote-code name.

    The LM projections that the original wraps in its speech/vision LoRA get `base_layer.` (read from
    the original's index when it has one, else `ORIGINAL_LORA_MODULES`).
    """
    for pattern, replacement in TO_ORIGINAL:
        new, n = re.subn(pattern, replacement, key)
        if n:
            return new
    wrapped = key.removesuffix(".weight") in lora_modules if lora_modules is not None else \
        re.match(ORIGINAL_LORA_MODULES, key)
    return key.removesuffix("weight") + "base_layer.weight" if wrapped else key


def original_state_dict(model, lora_modules: set[str] | None = None) -> dict[str, torch.Tensor]:
    """The merged weights under the original names; a tied lm_head is left out (the original has none)."""
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return {original_key(k, lora_modules): v.contiguous() for k, v in state.items()}


def original_folder(source: str | None, revision: str, cfg: Config) -> Path:
    """The original repo's config, processor, tokenizer and remote-code files (no weights): a folder, or the hub
    (default: the run's base)."""
    if source is None and (cfg.is_tiny or Path(cfg.base).is_dir()):
        raise ExportError(f"a {'tiny run' if cfg.is_tiny else 'base folder'} has no original remote-code model on the "
                          "hub: give --original FOLDER with its files")
    source = source or cfg.base
    if Path(source).is_dir():
        folder = Path(source)
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(source, revision=revision, allow_patterns=ORIGINAL_FILES))
        except Exception as exc:  # noqa: BLE001 - any failure: say what to download, and where to put it
            raise ExportError(f"cannot fetch the original files of {source} (revision {revision}) from the Hugging "
                              f"Face hub ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}). Download them "
                              f"where there is a network (`hf download {source} --revision {revision} --exclude "
                              "'*.safetensors' --local-dir DIR`) and give --original DIR") from None
    config = folder / "config.json"
    if not config.is_file() or "auto_map" not in json.loads(config.read_text()):
        raise ExportError(f"{folder} has no original (remote-code) config.json with an auto_map: the vllm layout "
                          f"needs Microsoft's original files (revision {ORIGINAL_REVISION}, not {cfg.revision})")
    return folder


def original_lora_modules(source: Path) -> set[str] | None:
    """Modules whose weight the original index lists as `base_layer.weight`; None without an index."""
    index = source / "model.safetensors.index.json"
    if not index.is_file():
        return None
    keys = json.loads(index.read_text())["weight_map"]
    return {k.removesuffix(".base_layer.weight") for k in keys if k.endswith(".base_layer.weight")}


def check_against_index(keys: set[str], source: Path) -> None:
    """With the original's index: exactly its weights, less the LoRA ones (which vLLM would drop anyway)."""
    index = source / "model.safetensors.index.json"
    if not index.is_file():
        return
    expected = {k for k in json.loads(index.read_text())["weight_map"] if "lora" not in k}
    if keys != expected:
        raise ExportError(f"the exported weights differ from the original's ({index}): "
                          f"missing {sorted(expected - keys)[:3]}, extra {sorted(keys - expected)[:3]}")


def save_vllm(model, tokenizer, source: Path, out: Path) -> None:
    """Merged weights under the original names, the original files, the tokenizer with the control tokens."""
    from huggingface_hub import save_torch_state_dict

    for path in sorted(source.iterdir()):
        if path.is_file() and path.name not in NOT_COPIED and any(path.match(p) for p in ORIGINAL_FILES):
            shutil.copyfile(path, out / path.name)
    state = original_state_dict(model, original_lora_modules(source))
    check_against_index(set(state), source)
    save_torch_state_dict(state, str(out), max_shard_size="5GB")
    config = json.loads((out / "config.json").read_text())
    config["vocab_size"] = model.get_input_embeddings().weight.shape[0]  # grows only if the tokens did not fit
    config["torch_dtype"] = str(model.dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_original_tokenizer(tokenizer, source, out)
    check_saved_keys(out)


def save_original_tokenizer(trained, source: Path, out: Path) -> None:
    """The original tokenizer plus the control tokens, at the ids the model was trained with."""
    from transformers import AutoTokenizer

    from pronlm.model.adapters import add_control_tokens

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)  # its config.json has an auto_map
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read the original tokenizer in {source}: {exc}") from None
    ids = add_control_tokens(tokenizer)
    want = {task: trained.convert_tokens_to_ids(tok) for task, tok in CONTROL_TOKENS.items() if tok in trained.get_vocab()}
    ids = {task: i for task, i in ids.items() if task in want}  # a checkpoint from before the word task has two
    if ids != want:
        raise ExportError(f"the original tokenizer gives the control tokens ids {ids}, the trained one {want}: "
                          "the model would read other rows")
    tokenizer.save_pretrained(out)


def model_card(cfg: Config, adapter: str, layout: str, summary: dict) -> str:
    """README.md: what it is, how to use it, the recipe and data, the evaluation table if any, licenses, citations."""
    steps = Run(adapter).global_step()
    use = (["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "model = AutoModelForCausalLM.from_pretrained(DIR)  # no peft: the LoRA is merged",
            "```", "", "or with pronlm: `pronlm predict base=DIR --corpus ... --out pred.jsonl` (this folder carries "
            "the run's config.yaml and prompts, so predictions match the checkpoint's)."] if layout == "transformers"
           else ["Microsoft's original remote-code layout (`Phi4MMForCausalLM`), for vLLM:", "",
                 "```", "vllm serve DIR --trust-remote-code --max-model-len 4096", "```", "",
                 "The speech LoRA and the fine-tuned LoRA are merged into the weights: serve it **without** "
                 "`--enable-lora` and without the base's speech-lora. Images are untested: the base's vision LoRA "
                 "was trained on the unmerged weights."])
    table = next((p / TABLE_MD for p in (Path(adapter), Path(adapter).parent) if (p / TABLE_MD).is_file()), None)
    lines = ["---", "license: mit", *([] if cfg.is_tiny or Path(cfg.base).exists() else [f"base_model: {cfg.base}"]),
             "datasets:", "- mispeech/speechocean762",
             "language:", "- en", "library_name: transformers", "tags:", "- pronunciation-assessment",
             "- mispronunciation-detection", "- speech", "- pronlm", "---", "",
             f"# {Path(adapter).resolve().parent.name}/{Path(adapter).name}: pronunciation assessment (APA) and "
             "mispronunciation detection (MDD)", "",
             f"{'A tiny random test model, not a pronunciation model. ' if cfg.is_tiny else ''}"
             f"Phi-4-multimodal fine-tuned with LoRA by pronlm, reproducing {PAPER}. The task is chosen by a control "
             f"token: `{render_prompt('apa', '{instructions}', cfg.prompt_layout)}` answers sentence scores "
             "0–10 as JSON, `<|MDD|>` the words and phones heard"
             + (", `<|WRD|>` (its instructions holding the sentence's words) the accuracy, stress and total 0–10 of "
                "each word" if "wrd" in cfg.tasks else "") + ". The prompts are in `prompts/`.", "",
             "## Use", "", *use, "",
             "## Recipe", "",
             f"- base: `{cfg.base}` (revision `{cfg.revision}`), strategy `{cfg.strategy}`"
             + (f", LoRA r={cfg.lora_r}, alpha={cfg.lora_alpha}" if cfg.strategy == "new-lora" else
                " (the base's speech LoRA continued)"),
             f"- learning rate {cfg.learning_rate:g}, batch {cfg.per_device_train_batch_size} x accumulation "
             f"{cfg.gradient_accumulation_steps}, {cfg.lr_scheduler_type} schedule"
             + (f", {steps} steps" if steps is not None else ""),
             f"- merged from `{Path(adapter).name}`; the full training config is `config.yaml`", "",
             "## Data", "",
             f"- trained on {'`' + cfg.data + '`' if cfg.data else f'`{cfg.corpus}` split `{cfg.train_split}`'}"
             + (f" (first {cfg.limit} utterances)" if cfg.limit else ""),
             "- SpeechOcean762: 5,000 English utterances by 250 Mandarin-L1 speakers, CC BY 4.0", "",
             "## Evaluation", "",
             *([table.read_text().strip(), ""] if table else
               ["No evaluation table in this run (`pronlm table --run RUN` builds the paper's Table 3).", ""]),
             "## License", "",
             "The weights derive from microsoft/Phi-4-multimodal-instruct (MIT license); the training data, "
             "SpeechOcean762, is CC BY 4.0 (attribution below).", "",
             "## Citation", "", "```bibtex",
             "@article{ahn2025pronunciation,",
             "  title={English Pronunciation Evaluation without Complex Joint Training: LoRA Fine-tuned Speech "
             "Multimodal {LLM}},",
             "  author={Ahn, Taekyung and Nam, Hosung},", "  journal={arXiv preprint arXiv:2509.02915},",
             "  year={2025}", "}", "",
             "@inproceedings{zhang2021speechocean762,",
             "  title={speechocean762: An Open-Source Non-native English Speech Corpus For Pronunciation Assessment},",
             "  author={Zhang, Junbo and Zhang, Zhiwen and Wang, Yongqing and Yan, Zhiyong and Song, Qiong and "
             "Huang, Yukai and Li, Ke and Povey, Daniel and Wang, Yujun},",
             "  booktitle={Proc. Interspeech 2021}, year={2021}, note={arXiv:2104.01378}", "}", "```", ""]
    return "\n".join(lines)


def push(folder: Path, repo: str, private: bool = False) -> str:
    """Create `repo` (if new) and upload the folder as one commit; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        layout = json.loads((folder / EXPORT_FILE).read_text())["layout"]
        info = api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model",
                                 commit_message=f"pronlm export ({layout} layout)")
    except Exception as exc:  # noqa: BLE001 - network, auth or permission: the folder is still there
        raise ExportError(f"upload of {folder} to {repo} failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]}); the export is complete in {folder}: log in "
                          "(`hf auth login`) and push it again with `hf upload`") from None
    return str(getattr(info, "commit_url", info))
