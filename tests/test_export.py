"""`pronlm export` on tiny runs trained on real clips: the merged folder answers exactly as the adapter does,
with plain transformers (peft blocked); the vllm layout maps back through transformers' own conversion rules
and every key passes vLLM's loader rules; the upload sends exactly the folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pronlm.config import command_config, load_config
from pronlm.data.audio import load_audio
from pronlm.data.corpus import read_corpus
from pronlm.evaluation.predict import Predictor
from pronlm.model.export import ExportError, export
from pronlm.model.train import train
from pronlm.run import TINY_BASE
from tests.test_load import make_speech_adapter

STRATEGIES = ("new-lora", "speech-lora", "unfreeze")
MAX_NEW_TOKENS = 40


@pytest.fixture(scope="module")
def runs(corpus_dir, tmp_path_factory):
    """One short tiny run per strategy (limit 4, 6 steps at lr 1e-2): {strategy: checkpoint-6}."""
    from pronlm.model.adapters import add_control_tokens
    from pronlm.model.tiny import build_tiny_model, build_tiny_tokenizer

    root = tmp_path_factory.mktemp("runs")
    tokenizer = build_tiny_tokenizer()
    add_control_tokens(tokenizer)
    speech = make_speech_adapter(build_tiny_model(tokenizer), root / "shipped-speech-lora")
    checkpoints = {}
    for strategy in STRATEGIES:
        out = root / strategy
        cfg = load_config("tiny-cpu", dict(strategy=strategy, speech_adapter=str(speech), corpus=str(corpus_dir),
                                           output_dir=str(out), limit=4, max_steps=6, save_strategy="steps",
                                           save_steps=6, per_device_train_batch_size=4, learning_rate=1e-2))
        train(cfg)
        checkpoints[strategy] = out / "checkpoint-6"
    return checkpoints


@pytest.fixture(scope="module")
def clips(corpus_dir):
    """The 10 test utterances of the real subset, as (id, samples)."""
    items = [(u.id, load_audio(u.audio)) for u in read_corpus(str(corpus_dir), "test")]
    assert len(items) == 10
    return items


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {s: (export(str(ckpt), str(root / s)), root / s) for s, ckpt in runs.items()}


# Runs in a fresh interpreter in which `import peft` fails: plain transformers loads the folder.
PLAIN_LOAD = """
import json, sys
sys.modules["peft"] = None  # any import of peft now raises ImportError
from transformers import AutoModelForCausalLM, AutoTokenizer, Phi4MultimodalFeatureExtractor
from pronlm.data.audio import load_audio
from pronlm.data.corpus import read_corpus
from pronlm.evaluation.predict import Predictor
from pronlm.data.prompts import PromptSet
out, corpus = sys.argv[1:3]
model = AutoModelForCausalLM.from_pretrained(out)
predictor = Predictor(model, AutoTokenizer.from_pretrained(out),
                      PromptSet.from_templates(f"{out}/prompts/apa.txt", f"{out}/prompts/mdd.txt"), MAX_NEW_TOKENS,
                      feature_extractor=Phi4MultimodalFeatureExtractor.from_pretrained(out))
items = [(u.id, load_audio(u.audio)) for u in read_corpus(corpus, "test")]
print(json.dumps({"class": type(model).__name__, "raw": [r["raw"] for r in predictor.predict(items)]}))
""".replace("MAX_NEW_TOKENS", str(MAX_NEW_TOKENS))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_export_answers_as_the_adapter_does_without_peft(strategy, runs, exports, clips, corpus_dir):
    ckpt, (_, out) = runs[strategy], exports[strategy]
    adapter = [r["raw"] for r in Predictor.load(command_config(adapter=str(ckpt), overrides=[f"max_new_tokens={MAX_NEW_TOKENS}"]), str(ckpt)).predict(clips)]
    done = subprocess.run([sys.executable, "-c", PLAIN_LOAD, str(out), str(corpus_dir)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    plain = json.loads(done.stdout.splitlines()[-1])
    assert plain["class"] == "Phi4MultimodalForCausalLM"
    assert len(adapter) == 20 and plain["raw"] == adapter  # 10 clips x (APA, MDD), token for token
    from transformers import AutoTokenizer, Phi4MultimodalForCausalLM

    from pronlm.data.prompts import PromptSet

    base = Predictor(Phi4MultimodalForCausalLM.from_pretrained(ckpt.parent / TINY_BASE),
                     AutoTokenizer.from_pretrained(ckpt), PromptSet.from_templates(
                         str(ckpt / "prompts" / "apa.txt"), str(ckpt / "prompts" / "mdd.txt")), MAX_NEW_TOKENS)
    untrained = [r["raw"] for r in base.predict(clips)]
    assert sum(a != b for a, b in zip(untrained, adapter)) >= 10  # the training is in the export, not a no-op


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_weights_hold_no_adapter_keys_and_the_trained_token_rows(strategy, runs, exports):
    from pronlm.config import Config
    from pronlm.model.load import load_model

    ckpt, (summary, out) = runs[strategy], exports[strategy]
    weights = load_file(str(out / "model.safetensors"))
    assert not [k for k in weights if "lora" in k or "trainable_tokens" in k or "token_adapter" in k
                or "modules_to_save" in k or "original_module" in k or "base_layer" in k]
    ids = [summary["control_tokens"][t] for t in ("<|APA|>", "<|MDD|>")]
    assert ids == [1024, 1025]
    model, _ = load_model(Config(base="tiny"), str(ckpt), device="cpu")
    with torch.no_grad():
        trained = model.get_input_embeddings()(torch.tensor(ids))
    original = load_file(str(ckpt.parent / TINY_BASE / "model.safetensors"))
    base, embed = original["model.embed_tokens.weight"], weights["model.embed_tokens.weight"]
    assert torch.equal(embed[ids], trained) and not torch.equal(embed[ids], base[ids])
    others = torch.ones(len(embed), dtype=torch.bool)
    others[ids] = False
    assert torch.equal(embed[others], base[others])  # only the two rows moved
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and "lm_head.weight" not in weights  # the head reads the same rows
    assert set(weights) == set(original) - {"lm_head.weight"}
    changed = [k for k in weights if not torch.equal(weights[k], original[k])]
    if strategy == "unfreeze":  # the trained encoder and projector copies replaced the frozen ones
        assert any("audio_embed.encoder." in k for k in changed) and any("up_proj_for_speech" in k for k in changed)
    else:
        assert not any("audio_embed" in k for k in changed)
    assert any(re.match(r"model\.layers\.\d+\.self_attn\.qkv_proj\.weight", k) for k in changed)  # LoRA merged


@pytest.mark.slow
def test_the_folder_describes_itself(runs, exports):
    ckpt, (summary, out) = runs["new-lora"], exports["new-lora"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "README.md", "config.json", "config.yaml", "generation_config.json", "model.safetensors",
        "preprocessor_config.json", "prompts/apa.txt", "prompts/mdd.txt", "pronlm-export.json", "tokenizer.json",
        "tokenizer_config.json"]
    assert (out / "config.yaml").read_text() == (ckpt / "config.yaml").read_text()
    assert (out / "prompts" / "apa.txt").read_text() == (ckpt / "prompts" / "apa.txt").read_text()
    card = (out / "README.md").read_text()
    for needed in ("license: mit", "arXiv 2509.02915", "arXiv:2104.01378", "CC BY 4.0", "MIT license",
                   "strategy `new-lora`, LoRA r=32, alpha=64", "6 steps", "pronlm predict base=DIR"):
        assert needed in card, needed
    assert json.loads((out / "pronlm-export.json").read_text())["layout"] == "transformers"
    assert summary["bytes"] == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


@pytest.mark.slow
def test_the_model_card_carries_the_runs_table(runs, tmp_path):
    ckpt = runs["new-lora"]
    (ckpt.parent / "table.md").write_text("# Table 3 for run\n\n| system | epoch | acc PCC |\n|---|---|---|\n| x | 1 | 0.5 |\n")
    try:
        export(str(ckpt), str(tmp_path / "out"))
    finally:
        (ckpt.parent / "table.md").unlink()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Evaluation\n\n# Table 3 for run\n\n| system | epoch | acc PCC |" in card


@pytest.mark.slow
def test_cli_export_then_predict_on_the_export_gives_the_adapters_predictions(runs, corpus_dir, tmp_path, capsys):
    from pronlm.cli import main

    ckpt, out = runs["speech-lora"], tmp_path / "model"
    assert main(["export", "--adapter", str(ckpt), "--out", str(out)]) == 0
    assert f"to {out}:" in capsys.readouterr().out
    common = ["--corpus", str(corpus_dir), "--split", "test", "--max-new-tokens", "24", "--batch-size", "4"]
    assert main(["predict", f"base={out}", *common, "--out", str(tmp_path / "export.jsonl")]) == 0
    assert main(["predict", "--adapter", str(ckpt), *common, "--out", str(tmp_path / "adapter.jsonl")]) == 0
    exported, adapted = (tmp_path / "export.jsonl").read_text(), (tmp_path / "adapter.jsonl").read_text()
    assert len(exported.splitlines()) == 20 and exported == adapted
    saved = load_config(str(tmp_path / "export.config.yaml"))
    assert saved.base == str(out) and saved.apa_template == str(out / "prompts" / "apa.txt")


@pytest.mark.slow
def test_cli_errors_name_the_problem(runs, tmp_path, capsys):
    from pronlm.cli import main

    ckpt = runs["new-lora"]
    cases = [
        (["--adapter", str(tmp_path / "none"), "--out", str(tmp_path / "a")], "adapter folder"),
        (["--adapter", str(ckpt.parent / "runs"), "--out", str(tmp_path / "a")], "has no adapter_config.json"),
        (["--adapter", str(ckpt), "--out", str(ckpt)], "exists and is not an empty folder"),
        (["--adapter", str(ckpt), "--out", str(tmp_path / "v"), "--layout", "vllm"],
         "a tiny run has no original remote-code model on the hub: give --original FOLDER"),
    ]
    for args, message in cases:
        assert main(["export", *args]) == 2
        assert message in capsys.readouterr().err, message
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (bare / name).write_bytes((ckpt / name).read_bytes())
    assert main(["export", "--adapter", str(bare), "--out", str(tmp_path / "b")]) == 2
    assert "has no config.yaml (nor its parent)" in capsys.readouterr().err


# transformers' own conversion, original -> native: STATE_DICT_MAPPING and map_old_key_to_new of
# src/transformers/models/phi4_multimodal/convert_phi4_multimodal_weights_to_hf.py (huggingface/transformers;
# the script is not shipped in the wheel, so its rules are copied here as data).
HF_STATE_DICT_MAPPING = {
    r"^model.embed_tokens_extend.audio_embed.encoder.encoders.(\d+).feed_forward_(in|out).net.0.linear": r"model.embed_tokens_extend.audio_embed.encoder.encoders.\1.feed_forward_\2.gate_up_proj",  # noqa: E501
    r"^model.embed_tokens_extend.audio_embed.encoder.encoders.(\d+).feed_forward_(in|out).net.2": r"model.embed_tokens_extend.audio_embed.encoder.encoders.\1.feed_forward_\2.down_proj",  # noqa: E501
    r"^model.embed_tokens_extend.audio_embed.encoder.encoders.(\d+).self_attn.linear_(q|k|v)": r"model.embed_tokens_extend.audio_embed.encoder.encoders.\1.self_attn.\2_proj",  # noqa: E501
    r"^model.embed_tokens_extend.audio_embed.encoder.encoders.(\d+).self_attn.linear_out": r"model.embed_tokens_extend.audio_embed.encoder.encoders.\1.self_attn.o_proj",  # noqa: E501
    r"^model.embed_tokens_extend.image_embed.img_projection.0": r"model.embed_tokens_extend.image_embed.img_projection_up",  # noqa: E501
    r"^model.embed_tokens_extend.image_embed.img_projection.2": r"model.embed_tokens_extend.image_embed.img_projection_down",  # noqa: E501
    r"^model.embed_tokens_extend.image_embed.glb_GN": r"model.embed_tokens_extend.image_embed.global_img_feature_extensor",  # noqa: E501
    r"^model.embed_tokens_extend.image_embed.sub_GN": r"model.embed_tokens_extend.image_embed.sub_img_feature_extensor",  # noqa: E501
    r"^model.embed_tokens_extend.audio_embed.audio_projection.speech.0": r"model.embed_tokens_extend.audio_embed.up_proj_for_speech",  # noqa: E501
    r"^model.embed_tokens_extend.audio_embed.audio_projection.speech.2": r"model.embed_tokens_extend.audio_embed.down_proj_for_speech",  # noqa: E501
    r"^model.embed_tokens_extend.audio_embed.audio_projection.vision.0": r"model.embed_tokens_extend.audio_embed.up_proj_for_vision_speech",  # noqa: E501
    r"^model.embed_tokens_extend.audio_embed.audio_projection.vision.2": r"model.embed_tokens_extend.audio_embed.down_proj_for_vision_speech",  # noqa: E501
}


def hf_map_old_key_to_new(old_key):
    for pattern, replacement in HF_STATE_DICT_MAPPING.items():
        new_key, n_replace = re.subn(pattern, replacement, old_key)
        if n_replace > 0:
            return new_key
    if "lora" in old_key:
        return None
    if "base_layer." in old_key:
        return old_key.replace("base_layer.", "")
    return old_key


# vLLM 0.33.0, vllm/model_executor/models/phi4mm.py, Phi4MMForCausalLM.hf_to_vllm_mapper (a WeightsMapper: the
# substrings first, the first matching prefix then; a None target drops the weight), and the top-level modules
# its __init__ builds (vision_encoder, embed_tokens_extend = AudioEmbedding, model = LlamaModel, lm_head).
VLLM_SUBSTR = {"base_layer.": "", "lora": None}
VLLM_PREFIX = {
    "model.embed_tokens_extend.audio_embed.audio_projection.vision.": "embed_tokens_extend.audio_projection_for_vision.",
    "model.embed_tokens_extend.audio_embed.audio_projection.speech.": "embed_tokens_extend.audio_projection.",
    "model.embed_tokens_extend.audio_embed.": "embed_tokens_extend.",
    "model.embed_tokens_extend.image_embed.": "vision_encoder.",
}
VLLM_MODULES = {"model": {"embed_tokens", "layers", "norm"}, "lm_head": set(),
                "embed_tokens_extend": {"encoder", "audio_projection", "audio_projection_for_vision"},
                "vision_encoder": {"img_processor", "glb_GN", "sub_GN", "img_projection"}}


def vllm_name(key: str) -> str | None:
    for substr, new in VLLM_SUBSTR.items():
        if substr in key:
            if new is None:
                return None
            key = key.replace(substr, new, 1)
    for prefix, new in VLLM_PREFIX.items():
        if key.startswith(prefix):
            return key.replace(prefix, new, 1)
    return key


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A stand-in for the hub repo's original revision: its config (with auto_map), code, processor and tokenizer
    files (the tiny tokenizer, without the control tokens), and what must not be copied (weights, LoRA folders)."""
    from pronlm.model.tiny import build_tiny_tokenizer

    src = tmp_path_factory.mktemp("original")
    build_tiny_tokenizer().save_pretrained(src)
    config = {"architectures": ["Phi4MMForCausalLM"], "model_type": "phi4mm", "tie_word_embeddings": True,
              "auto_map": {"AutoConfig": "configuration_phi4mm.Phi4MMConfig",
                           "AutoModelForCausalLM": "modeling_phi4mm.Phi4MMForCausalLM"},
              "vocab_size": 999, "speech_lora": {"r": 320, "lora_alpha": 640}}
    (src / "config.json").write_text(json.dumps(config))
    for name in ("modeling_phi4mm.py", "configuration_phi4mm.py", "processing_phi4mm.py"):
        (src / name).write_text(f"# stand-in for {name}\n")
    (src / "preprocessor_config.json").write_text('{"processor_class": "Phi4MMProcessor"}')
    (src / "model-00001-of-00003.safetensors").write_bytes(b"not copied")
    (src / "speech-lora").mkdir()
    (src / "speech-lora" / "adapter_config.json").write_text("{}")
    return src


@pytest.fixture(scope="module")
def vllm_export(runs, original, tmp_path_factory):
    out = tmp_path_factory.mktemp("vllm") / "model"
    summary = export(str(runs["new-lora"]), str(out), layout="vllm", original=str(original))
    return summary, out


@pytest.mark.slow
def test_vllm_layout_converts_back_to_the_merged_model_key_for_key(vllm_export, exports):
    from transformers import Phi4MultimodalConfig, Phi4MultimodalForCausalLM

    _, out = vllm_export
    exported = load_file(str(out / "model.safetensors"))
    merged = load_file(str(exports["new-lora"][1] / "model.safetensors"))  # the transformers layout of the same run
    converted = {hf_map_old_key_to_new(k): v for k, v in exported.items()}
    assert None not in converted and len(converted) == len(exported)
    assert set(converted) == set(merged)
    for key, value in merged.items():
        assert torch.equal(converted[key], value), key
    assert sum(".base_layer." in k for k in exported) == 2 * 4  # 2 layers x qkv, o, gate_up, down: as the original
    # as the conversion script loads them: only the tied lm_head missing, nothing unexpected
    config = Phi4MultimodalConfig.from_pretrained(exports["new-lora"][1])
    with torch.device("meta"):
        model = Phi4MultimodalForCausalLM(config)
    missing, unexpected = model.load_state_dict(converted, strict=False, assign=True)
    assert missing == ["lm_head.weight"] and unexpected == []


@pytest.mark.slow
def test_every_vllm_layout_key_passes_vllms_loader_rules(vllm_export):
    _, out = vllm_export
    keys = list(load_file(str(out / "model.safetensors")))
    names = {k: vllm_name(k) for k in keys}
    assert [k for k, n in names.items() if n is None] == []  # nothing vLLM would drop (as it drops LoRA)
    for key, name in names.items():
        top, second = name.split(".")[:2]
        assert top in VLLM_MODULES and (not VLLM_MODULES[top] or second in VLLM_MODULES[top]), (key, name)
        assert "base_layer" not in name
    assert "model.embed_tokens.weight" in names.values()
    assert "embed_tokens_extend.audio_projection.0.weight" in names.values()
    assert "embed_tokens_extend.encoder.encoders.0.feed_forward_in.net.0.linear.weight" in names.values()
    assert "embed_tokens_extend.encoder.encoders.0.self_attn.linear_q.weight" in names.values()


def test_the_original_names_of_the_real_model_invert_transformers_conversion():
    """On the full-size Phi-4-multimodal's module names (meta device): every native weight has an original name
    that transformers' conversion maps back to it, and that vLLM loads into one of its modules."""
    from transformers import Phi4MultimodalForCausalLM

    from pronlm.model.export import original_key
    from pronlm.model.phi4_config import real_config

    with torch.device("meta"):
        native = [k for k in Phi4MultimodalForCausalLM(real_config()).state_dict() if k != "lm_head.weight"]
    names = {k: original_key(k) for k in native}
    assert len(set(names.values())) == len(native) == 1535  # no two weights share an original name
    assert all(hf_map_old_key_to_new(o) == k for k, o in names.items())
    assert sum(".base_layer." in o for o in names.values()) == 32 * 4
    for key in names.values():
        name = vllm_name(key)
        top, second = name.split(".")[:2]
        assert top in VLLM_MODULES and (not VLLM_MODULES[top] or second in VLLM_MODULES[top]), (key, name)


@pytest.mark.slow
def test_vllm_layout_carries_the_original_files_and_the_control_tokens(vllm_export, runs, original):
    from transformers import AutoTokenizer

    summary, out = vllm_export
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["README.md", "config.json", "config.yaml", "configuration_phi4mm.py", "model.safetensors",
                     "modeling_phi4mm.py", "preprocessor_config.json", "processing_phi4mm.py", "prompts/apa.txt",
                     "prompts/mdd.txt", "pronlm-export.json", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_phi4mm.Phi4MMForCausalLM"
    assert config["vocab_size"] == 1088 and config["torch_dtype"] == "float32"  # the embedding's rows
    tokenizer, trained = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(runs["new-lora"])
    for token in ("<|APA|>", "<|MDD|>"):
        assert tokenizer.convert_tokens_to_ids(token) == trained.convert_tokens_to_ids(token)
        assert tokenizer(token, add_special_tokens=False).input_ids == [tokenizer.convert_tokens_to_ids(token)]
    assert "vllm serve" in (out / "README.md").read_text()


@pytest.mark.slow
def test_vllm_layout_is_not_a_pronlm_base(vllm_export, capsys, tmp_path):
    from pronlm.cli import main

    _, out = vllm_export
    assert main(["predict", f"base={out}", "--out", str(tmp_path / "p.jsonl")]) == 2
    assert "is a vllm-layout export (for vLLM): pronlm loads the transformers layout" in capsys.readouterr().err


@pytest.mark.slow
def test_vllm_layout_follows_the_original_index(runs, original, tmp_path):
    """With the original's index: the same weight names, less the LoRA ones; a mismatch is refused."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(original, src)
    first = export(str(runs["new-lora"]), str(tmp_path / "a"), layout="vllm", original=str(original))
    keys = list(load_file(str(tmp_path / "a" / "model.safetensors")))
    lora = [k.replace("base_layer.weight", f"lora_{x}.speech.weight") for k in keys if "base_layer" in k for x in "AB"]
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: "x" for k in keys + lora}}))
    export(str(runs["new-lora"]), str(tmp_path / "b"), layout="vllm", original=str(src))
    assert list(load_file(str(tmp_path / "b" / "model.safetensors"))) == keys
    assert first["layout"] == "vllm"
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: "x" for k in keys[1:]}}))
    with pytest.raises(ExportError, match="the exported weights differ from the original's"):
        export(str(runs["new-lora"]), str(tmp_path / "c"), layout="vllm", original=str(src))


@pytest.mark.slow
def test_an_unreachable_original_is_a_clear_error(runs, tmp_path):
    with pytest.raises(ExportError, match=r"cannot fetch the original files of pronlm-tests/no-such-model "
                                          r"\(revision main\).*give --original DIR"):
        export(str(runs["new-lora"]), str(tmp_path / "o"), layout="vllm", original="pronlm-tests/no-such-model")
    assert not (tmp_path / "o").exists()  # nothing half-written


@pytest.mark.slow
def test_push_to_hub_uploads_exactly_the_folder(runs, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class Recorder:
        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def upload_folder(self, **kw):
            folder = Path(kw["folder_path"])
            files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
            calls.append(("upload_folder", kw["repo_id"], files, kw["repo_type"]))
            return type("Info", (), {"commit_url": f"https://hub.example/{kw['repo_id']}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", Recorder)
    out = tmp_path / "model"
    summary = export(str(runs["new-lora"]), str(out), push_to_hub="someone/pronlm-tiny", private=True)
    assert calls == [
        ("create_repo", "someone/pronlm-tiny", {"repo_type": "model", "private": True, "exist_ok": True}),
        ("upload_folder", "someone/pronlm-tiny",
         ["README.md", "config.json", "config.yaml", "generation_config.json", "model.safetensors",
          "preprocessor_config.json", "prompts/apa.txt", "prompts/mdd.txt", "pronlm-export.json", "tokenizer.json",
          "tokenizer_config.json"], "model")]
    assert summary["url"] == "https://hub.example/someone/pronlm-tiny/commit/1"


@pytest.mark.slow
def test_a_failed_upload_keeps_the_export_and_says_so(runs, tmp_path, monkeypatch):
    import huggingface_hub

    class Refusing:
        def create_repo(self, *a, **kw):
            raise PermissionError("401 Unauthorized")

    monkeypatch.setattr(huggingface_hub, "HfApi", Refusing)
    with pytest.raises(ExportError, match=r"upload of .* to someone/x failed \(PermissionError: 401 Unauthorized\); "
                                          r"the export is complete in"):
        export(str(runs["new-lora"]), str(tmp_path / "m"), push_to_hub="someone/x")
    assert (tmp_path / "m" / "model.safetensors").is_file()
