"""The paper's Table 3 for a run: every saved checkpoint predicted and evaluated, one row per epoch.

`pronlm train ... eval_split=test` builds it after training and `pronlm table --run RUN` (re)builds
it for an existing run. Every step resumes: predictions go to `checkpoint-N/<split>.jsonl` (`predict`
adds only what is missing) and a report is written again only when its predictions are newer.
With `dev_fraction`, a speaker-disjoint development split carved from train is evaluated too: the
epoch it selects gives the honest test row (an epoch chosen on the test set itself is optimistic).
With `early_stop_patience` as well, the development split is evaluated during training, at each
epoch's checkpoint (`dev_history`), and training stops once it has not improved for that many epochs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from pronlm.config import Config
from pronlm.data.records import ASPECTS
from pronlm.errors import PronlmError
from pronlm.evaluation.evaluate import evaluate
from pronlm.evaluation.markdown import GRANULARITY_HEADER, granularity_cells, granularity_row
from pronlm.evaluation.paper import GRANULARITY_SYSTEMS, PAPER_TABLE3, PAPER_TEST_SIZE
from pronlm.evaluation.predict import Predictor, predict
from pronlm.model.adapters import swap_adapter
from pronlm.model.load import resolve_base
from pronlm.run import DEV_HISTORY, DEV_SPEAKERS, TABLE_JSON, TABLE_MD, Run

log = logging.getLogger(__name__)

# Paper Table 3's columns, in its order (paper.PAPER_TABLE3 holds its rows in the same order)
COLUMNS = ("acc_pcc", "flu_pcc", "pro_pcc", "total_pcc", "wer", "per", "f1", "precision", "recall")
HEADERS = ("acc PCC", "flu PCC", "pro PCC", "total PCC", "WER", "PER", "F1", "P", "R")
DEV = "dev"  # the development split's file names: checkpoint-N/dev.jsonl, checkpoint-N/report-dev/
UNTRAINED = "untrained"  # folder of the no-adapter predictions in the run


class TableError(PronlmError):
    """The run cannot give a table (no config.yaml, no checkpoint, nothing to evaluate)."""


@dataclass(frozen=True)
class Entry:
    """What a row of the table evaluates: a checkpoint (its folder is the adapter) or the base alone (adapter None)."""

    name: str
    folder: Path
    adapter: str | None
    epoch: float
    step: int


def checkpoint_entries(run: Path) -> list[Entry]:
    """The run's checkpoints (`Run.checkpoints`) as table entries, by step."""
    return [Entry(c.folder.name, c.folder, str(c.folder), c.epoch, c.step) for c in Run(run).checkpoints()]


def untrained(run: Path) -> Entry:
    return Entry(UNTRAINED, run / UNTRAINED, None, 0, 0)


def evaluate_entry(cfg: Config, entry: Entry, name: str, split: str, speakers=None, predictor=None) -> dict:
    """Predict (resumable) then evaluate `split` of the run's corpus; `name` names the files (test, dev).

    Every row is decoded with the run's own config (`cfg`: templates, grammar, accent policy, boundaries);
    the untrained row of a tiny run is the run's own random base (tiny-base/), as its checkpoints'.
    `predictor`: a function giving a predictor that holds the entry's model (the model being trained),
    called only when something is left to predict; else predict loads the model.
    """
    preds, out = entry.folder / f"{name}.jsonl", entry.folder / f"report-{name}"
    row_cfg = dataclasses.replace(cfg, split=split, data=None, limit=None)  # the run's limit counted training utterances
    if entry.adapter is None and cfg.is_tiny:
        row_cfg = dataclasses.replace(row_cfg, base=resolve_base(cfg, str(entry.folder.parent)))  # the run
    predict(row_cfg, str(preds), entry.adapter, speakers=speakers, predictor=predictor)
    done = out / "report.json"
    if done.is_file() and done.stat().st_mtime_ns >= preds.stat().st_mtime_ns:
        return json.loads(done.read_text())
    log.info("evaluating %s on %s", entry.name, name)
    return evaluate(str(preds), cfg.corpus, split, str(out), accent_policy=cfg.accent_policy, speakers=speakers)


def metrics_row(report: dict) -> dict[str, float | None]:
    """A report's numbers in Table 3's columns (None where undefined, e.g. PCC of constant scores)."""
    apa, mdd = report["apa"], report["mdd"]
    values = [apa[a]["pcc"] for a in ASPECTS] + [mdd[k] for k in ("wer", "per", "f1", "precision", "recall")]
    return dict(zip(COLUMNS, values))


def table_row(entry: Entry, report: dict) -> dict:
    """A checkpoint's row: Table 3's columns, and the PCCs of its expected scores when it has them."""
    expected = report.get("apa_expected")
    return {"checkpoint": entry.name, "epoch": entry.epoch, "step": entry.step,
            "n_apa": report["apa"]["total"]["n"], "n_mdd": report["mdd"]["n"], **metrics_row(report),
            "expected_pcc": {a: expected[a]["pcc"] for a in ASPECTS} if expected else None,
            "granularities": granularity_row(report.get("granularities"))}


def _best(rows: list[dict]) -> dict | None:
    """The row of highest total PCC (the earliest on a tie); None when no row has one."""
    scored = [r for r in rows if r["total_pcc"] is not None]
    return max(scored, key=lambda r: (r["total_pcc"], -r["step"])) if scored else None


def choose_epoch(dev_rows: list[dict], test_rows: list[dict]) -> dict:
    """The epoch the development split selects (best dev total PCC), its test row, and the best-on-test row."""
    chosen = _best(dev_rows)
    trained = [r for r in test_rows if r["checkpoint"] != UNTRAINED]
    honest = next((r for r in trained if chosen and r["checkpoint"] == chosen["checkpoint"]), None)
    return {"selected": chosen and {k: chosen[k] for k in ("checkpoint", "epoch", "step", "total_pcc")},
            "honest": honest, "best_on_test": _best(trained)}


def should_stop(dev_rows: list[dict], patience: int) -> bool:
    """True once `patience` epochs have come after the best one (highest dev total PCC, earliest on a tie).

    A tie is no improvement. Before any epoch has a dev total PCC there is no best to wait on: training goes on.
    """
    best = _best(dev_rows)
    return best is not None and sum(r["step"] > best["step"] for r in dev_rows) >= patience


def dev_history(cfg: Config, run: str | Path, step: int, last_step: int, predictor=None) -> dict:
    """The development row of every checkpoint up to `step`, evaluated where missing, and whether to stop.

    Written to dev_history.json in the run. Rebuilt from the checkpoints' own predictions and reports each
    time, so a resumed run (or one that was killed while predicting) carries its history on. `last_step`:
    the step training ends at anyway; stopping there is no early stop. `predictor`: the model that holds
    checkpoint `step`'s weights (`evaluate_entry`; an earlier checkpoint missing its predictions, which only a hand-deleted file
    leaves, is loaded from its folder).
    """
    run = Path(run)
    speakers = set(Run(run).dev_speakers())
    rows = [table_row(t, evaluate_entry(cfg, t, DEV, cfg.train_split, speakers,
                                         predictor if t.step == step else None))
            for t in checkpoint_entries(run) if t.step <= step]
    best, stop = _best(rows), should_stop(rows, cfg.early_stop_patience)
    history = {"patience": cfg.early_stop_patience, "best": best and best["checkpoint"],
               "stopped_early": stop and step < last_step, "rows": rows}
    (run / DEV_HISTORY).write_text(json.dumps(history, indent=2) + "\n")
    if history["stopped_early"]:
        log.info("early stop at %s: the development total PCC has not improved since %s (patience %d)",
                 rows[-1]["checkpoint"], best["checkpoint"], cfg.early_stop_patience)
    return history


class OneModel:
    """One model for every checkpoint row of a table: loaded with the first checkpoint that has something
    left to predict, the next ones' adapters swapped into it (`swap_adapter`), not a model loaded per
    checkpoint. `for_entry` gives `evaluate_entry`'s `predictor`; None (predict loads) for the untrained
    row, whose base differs, and for a vLLM server, which holds its own model."""

    def __init__(self, cfg: Config):
        self.cfg, self.predictor, self.adapter = cfg, None, None

    def for_entry(self, entry: Entry):
        if entry.adapter is None or self.cfg.backend != "transformers":
            return None

        def predictor():
            if self.predictor is None:
                self.predictor = Predictor.load(self.cfg, entry.adapter)
            elif self.adapter != entry.adapter:
                swap_adapter(self.predictor.model, entry.adapter)
            self.adapter = entry.adapter
            return self.predictor

        return predictor


def build_table(run: str | Path, cfg: Config | None = None) -> dict:
    """Evaluate what is missing, then write table.json and table.md in the run; returns the table."""
    run = Path(run)
    cfg = cfg or Run(run).config()
    model = OneModel(cfg)
    entries = checkpoint_entries(run)
    if not entries:
        raise TableError(f"{run} has no checkpoint-N folder with a trainer_state.json: train with "
                         "save_strategy=epoch to evaluate every epoch")
    table = {"run": str(run), "corpus": cfg.corpus, "strategy": cfg.strategy, "split": cfg.eval_split,
             "columns": list(COLUMNS), "paper": [dict(strategy=s, epoch=e, **dict(zip(COLUMNS, v)))
                                                 for s, e, *v in PAPER_TABLE3],
             "rows": [], "n_utterances": None, "dev": None}
    if cfg.eval_split:
        for entry in ([untrained(run)] if cfg.eval_untrained else []) + entries:
            report = evaluate_entry(cfg, entry, cfg.eval_split, cfg.eval_split, predictor=model.for_entry(entry))
            table["rows"].append(table_row(entry, report))
            table["n_utterances"] = report["n_utterances"]
    if cfg.dev_fraction:
        speakers = Run(run).dev_speakers()
        dev_rows, n = [], None
        for entry in entries:
            report = evaluate_entry(cfg, entry, DEV, cfg.train_split, set(speakers), model.for_entry(entry))
            dev_rows.append(table_row(entry, report))
            n = report["n_utterances"]
        history = run / DEV_HISTORY
        table["dev"] = {"split": cfg.train_split, "fraction": cfg.dev_fraction, "speakers": speakers,
                        "n_utterances": n, "rows": dev_rows, **choose_epoch(dev_rows, table["rows"]),
                        "early_stop": json.loads(history.read_text())
                        if cfg.early_stop_patience and history.is_file() else None}
    (run / TABLE_JSON).write_text(json.dumps(table, indent=2) + "\n")
    (run / TABLE_MD).write_text(table_markdown(table))
    return table


def table_command(run: str, split: str | None = None, untrained: bool = False) -> dict:
    """`pronlm table`: the run's own eval_split (or `split`), the untrained row if asked; prints table.md."""
    cfg = Run(run).config()
    cfg = dataclasses.replace(cfg, eval_split=split or cfg.eval_split, eval_untrained=untrained or cfg.eval_untrained)
    if not cfg.eval_split and not cfg.dev_fraction:
        raise TableError(f"{run} was trained without eval_split: give --split test")
    table = build_table(run, cfg)
    print((Path(run) / TABLE_MD).read_text(), end="")
    return table


def _num(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _cells(row: dict) -> str:
    return " | ".join(_num(row[c]) for c in COLUMNS)


def _epoch(row: dict) -> str:
    return f"{row['epoch']:g}"


def table_markdown(table: dict) -> str:
    """Our rows beside the paper's Table 3; with a development split, the epoch it selects."""
    dev = table["dev"]
    header = ["| system | epoch | " + " | ".join(HEADERS) + " |", "|---|---|" + "---|" * len(HEADERS)]
    lines = [f"# Table 3 for {table['run']}", "",
             f"Strategy `{table['strategy']}`, corpus `{table['corpus']}`; each checkpoint's predictions and "
             "report are in `checkpoint-N/<split>.jsonl` and `checkpoint-N/report-<split>/`.", ""]
    if table["rows"]:
        chosen = dev and dev["selected"] and dev["selected"]["checkpoint"]
        lines += [f"## SpeechOcean762 {table['split']} ({table['n_utterances']} utterances) against the paper "
                  "(Ahn & Nam 2025, Table 3: test, 2,500 utterances)", "", *header,
                  *[f"| paper {p['strategy']} | {p['epoch']} | {_cells(p)} |" for p in table["paper"]],
                  *[f"| **this run{', no training' if r['checkpoint'] == UNTRAINED else ''}** "
                    f"({r['checkpoint']}{', selected on dev' if r['checkpoint'] == chosen else ''}) "
                    f"| {_epoch(r)} | {_cells(r)} |" for r in table["rows"]], ""]
    if dev:
        lines += _dev_section(dev, header)
    lines += _expected_section(table["rows"])
    lines += _granularity_section(table["rows"])
    lines += ["## What compares", "",
              "PCC (Pearson r per aspect), WER and PER are defined as in the paper. Our F1, P and R follow the "
              "standard MDD protocol (Li et al. 2016); the paper does not say how it counted its own, so those "
              "three columns do not compare (see any `report.md`)." + _coverage(table), ""]
    return "\n".join(lines)


def _expected_section(rows: list[dict]) -> list[str]:
    """The PCCs of the expected scores (Σ v·p(v), ours), beside the greedy integers' of the table above."""
    rows = [r for r in rows if r.get("expected_pcc")]
    if not rows:
        return []
    return ["## Expected scores (ours, not the paper's protocol)", "",
            "PCC of each aspect's probability-weighted score over the 11 values (`scores_expected`), "
            "for the same answers as the rows above, whose PCCs use the greedy integers:", "",
            "| checkpoint | epoch | acc PCC | flu PCC | pro PCC | total PCC |", "|---|---|---|---|---|---|",
            *[f"| {r['checkpoint']} | {_epoch(r)} | " + " | ".join(_num(r["expected_pcc"][a]) for a in ASPECTS) + " |"
              for r in rows], ""]


def _granularity_section(rows: list[dict]) -> list[str]:
    """Each checkpoint at GOPT's three granularities (phone, word, utterance), beside GOPT's published row."""
    rows = [r for r in rows if r.get("granularities")]
    if not rows:
        return []
    return ["## Three granularities (GOPT's protocol)", "",
            "Phone accuracy MSE / PCC over every phone, word and utterance PCCs (see any `report.md` for what "
            "each column is and which granularities its predictions lack; \"–\": missing or undefined):", "",
            *GRANULARITY_HEADER,
            *[f"| {name} | " + " | ".join(_num(v) for v in vals) + " |" for name, *vals in GRANULARITY_SYSTEMS],
            *[f"| {r['checkpoint']} (epoch {_epoch(r)}) | {granularity_cells(r['granularities'])} |" for r in rows],
            ""]


def _dev_section(dev: dict, header: list[str]) -> list[str]:
    lines = ["## Choosing the epoch on a development split", "",
             f"{len(dev['speakers'])} speakers of {dev['split']} ({dev['n_utterances']} utterances; dev_fraction "
             f"{dev['fraction']:g}, listed in `{DEV_SPEAKERS}`) were held out of training and evaluated every epoch:",
             "", *header, *[f"| dev ({r['checkpoint']}) | {_epoch(r)} | {_cells(r)} |" for r in dev["rows"]], ""]
    stop = dev.get("early_stop")
    if stop and stop["stopped_early"]:
        lines += [f"Training stopped early after {stop['rows'][-1]['checkpoint']} (epoch {_epoch(stop['rows'][-1])}): "
                  f"the development total PCC had not improved for {stop['patience']} epoch(s) "
                  f"(early_stop_patience, `{DEV_HISTORY}`).", ""]
    if dev["selected"] is None:
        return lines + ["No epoch has a development total PCC (constant or unreadable scores): none selected.", ""]
    selected = dev["selected"]
    lines.append(f"The development split selects **epoch {selected['epoch']:g}** ({selected['checkpoint']}, "
                 f"dev total PCC {_num(selected['total_pcc'])}).")
    if dev["honest"]:
        best = dev["best_on_test"]
        lines += ["Its test row is the honest result; the best row on test was chosen by looking at the test set:",
                  "", *header, f"| **honest: selected on dev** | {_epoch(dev['honest'])} | {_cells(dev['honest'])} |"]
        if best:
            lines.append(f"| best on test (optimistic) | {_epoch(best)} | {_cells(best)} |")
    return lines + [""]


def _coverage(table: dict) -> str:
    if not table["rows"] or (table["split"] == "test" and table["n_utterances"] == PAPER_TEST_SIZE):
        return ""
    return (f" This table covers {table['n_utterances']} utterances of the {table['split']} split, not the "
            f"paper's {PAPER_TEST_SIZE:,} test utterances, so its numbers do not compare directly.")


class DevJudge:
    """early_stop_patience (`pronlm.model.train.EarlyStopping`): the development row of the checkpoint just
    saved, predicted by the model being trained (its weights are that checkpoint's), and whether to stop.

    One predictor around that model for the whole run, made when first needed: no second copy of the model.
    """

    def __init__(self, cfg: Config):
        self.cfg, self.predictor = cfg, None

    def __call__(self, model, tokenizer, step: int, last_step: int) -> bool:
        def around():
            if self.predictor is None or self.predictor.model is not model:
                self.predictor = Predictor.around(model, tokenizer, self.cfg)
            return self.predictor

        return dev_history(self.cfg, self.cfg.output_dir, step, last_step, around)["stopped_early"]
