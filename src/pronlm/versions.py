"""The oldest version of each library that has what pronlm uses, checked when a command starts.

pip applies pyproject.toml's floors when it installs pronlm, but an environment put together another
way (beside vLLM, in a notebook, `pip install --no-deps`) can hold older ones, which fail far from the
cause: transformers 5.22 has no `TrainingArguments(activation_checkpointing=...)`, and a run would
stop with a TypeError at its first training step. A test keeps pyproject.toml's floors equal to these.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version

from pronlm.errors import PronlmError

# Each floor, and what its version first has (checked in the wheels, see the notes on the issue).
MINIMUM = {
    "transformers": ("5.23", "TrainingArguments(activation_checkpointing=...)"),
    "torch": ("2.6", "what transformers 5.23 needs"),
    "accelerate": ("1.1.0", "what transformers 5.23's Trainer needs"),
    "huggingface-hub": ("1.31", "what transformers 5.23 needs"),
    "peft": ("0.18", "imports under transformers 5 (0.17 imports the removed HybridCache)"),
    "llguidance": ("1.7", "LLExecutor, hf.from_tokenizer(n_vocab, eos_token=[...]), x-guidance separators"),
    "bitsandbytes": ("0.46.1", "what transformers 5.23 needs for 4-bit (the gpu extra)"),
}


class VersionError(PronlmError):
    """An installed library is older than pronlm needs."""


def check_versions(minimum: dict[str, tuple[str, str]] = MINIMUM) -> None:
    """Raise `VersionError` naming the first installed library older than its floor (absent ones pass:
    a missing requirement fails at its import, an optional one is not needed)."""
    for name, (floor, because) in minimum.items():
        try:
            have = version(name)
        except PackageNotFoundError:
            continue
        if Version(have) < Version(floor):
            raise VersionError(f"{name} {have} is older than pronlm needs ({floor}: {because}); "
                               f"pip install '{name}>={floor}'")
