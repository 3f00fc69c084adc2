"""Evaluation: predictions from a checkpoint (in this process or from a vLLM server, free or under
the answer's grammar), the paper's metrics (PCC, WER, PER, MDD F1), the report against the paper,
and the per-epoch Table 3 of a run.
"""
