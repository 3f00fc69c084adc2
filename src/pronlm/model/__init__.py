"""The model: Phi-4-multimodal (or the tiny random one, an ordinary cached model folder) loaded by
one `load_model`, its adapters per strategy, batches collated into features, tokens and labels,
the training run, and `pronlm export`'s standalone folders.
"""
