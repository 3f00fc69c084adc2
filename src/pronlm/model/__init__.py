"""The model: Phi-4-multimodal (or the tiny random one, an ordinary cached model folder) loaded by
one `load_model` (`load`), its adapters per strategy (`adapters`, 4-bit in `quantize`), batches collated into features, tokens and labels,
the training run, and `pronlm export`'s standalone folders.
"""
