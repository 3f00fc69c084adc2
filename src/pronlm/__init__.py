"""pronlm: one speech-language model that scores English pronunciation and transcribes what was said.

The package follows the data: `data` (corpus, audio, targets, prompts, examples) -> `model` (loading,
the tiny model, collation, training, export) -> `evaluation` (prediction, metrics, reports, the
paper's table) -> `app` (assess one recording, the web page, the demo). Each folder imports only from
the ones before it and from the shared `config` and `errors`; `cli` wires commands to them.
"""
