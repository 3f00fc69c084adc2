"""Data in: SpeechOcean762 (or your own examples) read into typed records, audio checked and
resampled, the heard phones and the two answers (APA scores, MDD transcripts) derived from the
annotation, the prompts with their control tokens, answers parsed back, and `pronlm prepare`'s
examples.jsonl. Pure Python plus soundfile and scipy; no model.
"""
