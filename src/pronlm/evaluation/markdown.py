"""report.md: our numbers beside the paper's Table 3 and the other systems, with what compares
and what does not."""

from __future__ import annotations

from pathlib import Path

from pronlm.data.records import ASPECTS
from pronlm.evaluation.paper import (
    GOPT_PHONE,
    GRANULARITY_COLUMNS,
    GRANULARITY_HEADERS,
    GRANULARITY_SYSTEMS,
    OTHER_SYSTEMS,
    PAPER_TABLE3,
    PAPER_TEST_SIZE,
)
from pronlm.evaluation.plots import PLOTS


def _num(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def report_markdown(report: dict, predictions: str) -> str:
    """Our numbers beside the paper's Table 3 and the other systems, with what compares and what does not."""
    apa, mdd, parse = report["apa"], report["mdd"], report["parse"]
    ours = [apa[a]["pcc"] for a in ASPECTS] + [mdd[k] for k in ("wer", "per", "f1", "precision", "recall")]
    lines = [
        f"# pronlm evaluation: SpeechOcean762 {report['split']}, {report['n_utterances']} utterances", "",
        f"Predictions `{predictions}`; heard phones with accent policy `{report['accent_policy']}`; "
        f"{apa['accuracy']['n']} APA answers scored, {mdd['n']} MDD answers scored.", "",
        "## Against the paper (Ahn & Nam 2025, Table 3, SpeechOcean762 test, 2,500 utterances)", "",
        "| system | epoch | acc PCC | flu PCC | pro PCC | total PCC | WER | PER | F1 | P | R |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *[f"| paper {s} | {e} | " + " | ".join(_num(v) for v in vals) + " |" for s, e, *vals in PAPER_TABLE3],
        "| **this run** | | " + " | ".join(f"**{_num(v)}**" for v in ours) + " |",
        *_expected_row(report, 5), "", *_which_scores(report),
        "## Other systems on SpeechOcean762", "",
        "| system | acc PCC | flu PCC | pro PCC | total PCC | PER | MDD F1 (standard protocol) |",
        "|---|---|---|---|---|---|---|",
        *["| " + name + " | " + " | ".join(_num(v) for v in vals) + " |" for name, *vals in OTHER_SYSTEMS],
        "| **this run** | " + " | ".join(f"**{_num(v)}**" for v in ours[:4] + [mdd["per"], mdd["f1"]]) + " |",
        *_expected_row(report, 2), "",
        *granularity_section(report.get("granularities")),
        "## What compares", "",
        "PCC (Pearson r per aspect), WER and PER are defined as in the paper and compare directly when this run "
        "covers the 2,500 test utterances. Our precision, recall and F1 follow the standard MDD protocol "
        "(Li et al. 2016: per canonical phone, TR/(TR+FR) and TR/(TR+FA)) and compare with Joint-CAPT-L1, HMamba "
        "and MuFFIN. The predicted phones are aligned with the canonical ones using the annotation: a predicted "
        "phone pairs at no cost with the canonical or the heard phone of a position, and a phone the annotators "
        "marked deleted may be left out at no cost (ties go to the reading with more agreeing pairs), so a "
        "transcript equal to the heard phones scores every error as a correct diagnosis; predicted insertions are "
        "left out of these counts and count in PER. The paper does not state how its P/R/F1 were counted "
        "(P≈R≈F1≈0.72 with PER 0.11 does not look like the standard protocol), so its F1/P/R columns are not "
        "comparable with ours." + _coverage(report), "",
        "## Details", "",
        "| aspect | PCC | 95% CI | p-value | Spearman | MSE | n |", "|---|---|---|---|---|---|---|",
        *[f"| {a} | {_num(v['pcc'])} | {_ci(v['ci95'])} | {_num(v['p_value'], 4)} | {_num(v['spearman'])} "
          f"| {_num(v['mse'], 2)} | {v['n']} |" for a, v in apa.items()],
        *[f"| {a} (expected) | {_num(v['pcc'])} | {_ci(v['ci95'])} | {_num(v['p_value'], 4)} | "
          f"{_num(v['spearman'])} | {_num(v['mse'], 2)} | {v['n']} |"
          for a, v in (report["apa_expected"] or {}).items()],
        "", *_calibration(report), *_phones(report),
        f"MDD: PER {_num(mdd['per'])} (95% CI {_ci(mdd['per_ci95'])}), F1 {_num(mdd['f1'])} "
        f"(95% CI {_ci(mdd['f1_ci95'])}), FAR {_num(mdd['far'])}, FRR {_num(mdd['frr'])}, DER {_num(mdd['der'])}; "
        "counts " + ", ".join(f"{k} {v}" for k, v in mdd["counts"].items()) + ". "
        "CIs: 1,000 bootstrap resamples of utterances.", "",
        f"Parsing: {parse['apa_failed']} APA and {parse['mdd_failed']} MDD answers failed to parse (failed MDD "
        f"answers count as empty transcripts; failed APA answers are left out of the PCC); "
        f"{parse['apa_missing']} APA and {parse['mdd_missing']} MDD predictions missing (left out); "
        f"{parse['unknown_ids']} prediction lines with ids not in the corpus skipped; {parse['out_of_range']} "
        f"APA answers failed with a score outside 0-10; {parse['repeated_agreeing']} repeated lines agreed and "
        f"counted once, {parse['repeated_conflicting']} disagreed.", "",
        *[f"![{Path(p).stem}]({p})" for p in PLOTS], "",
    ]
    return "\n".join(lines)


def _expected_row(report: dict, blanks: int) -> list[str]:
    """The row of PCCs on the expected scores, when the predictions have them; `blanks` columns after."""
    expected = report.get("apa_expected")
    if not expected:
        return []
    return ["| **this run, expected scores** | " + ("| " if blanks == 5 else "")
            + " | ".join(f"**{_num(expected[a]['pcc'])}**" for a in ASPECTS) + " |" + " – |" * blanks]


def _which_scores(report: dict) -> list[str]:
    if not report.get("apa_expected"):
        return ["APA PCCs are on the greedy integer scores (the paper's protocol).", ""]
    return ["Two sets of APA PCCs: **this run** on the greedy integer scores (`scores`, the paper's protocol); "
            "**this run, expected scores** on the probability-weighted scores (`scores_expected`: for each aspect "
            "Σ v·p(v) over the 11 value tokens at the score's position; ours, not the paper's).", ""]


def _phones(report: dict) -> list[str]:
    """GOPT's phone granularity: our phone scores against the annotation's phone accuracy (0-2)."""
    phone = report.get("phone")
    if not phone:
        return ["Phone scores: none in the predictions (`phone_scores` of the MDD records), so no phone-level "
                "MSE/PCC.", ""]
    skipped = (f" {phone['skipped_utterances']} utterances whose scores did not match their canonical phones "
               "were left out." if phone["skipped_utterances"] else "")
    return ["Phone scores (`phone_scores`: 2·p(canonical) + p(<unk>) from the teacher-forced MDD answer, no "
            "training of their own) against the annotation's phone accuracy, over every canonical phone "
            "(GOPT's protocol)." + skipped, "",
            "| system | phone MSE | phone PCC | 95% CI | n |", "|---|---|---|---|---|",
            f"| GOPT (Gong et al. 2022) | {_num(GOPT_PHONE[0])} | {_num(GOPT_PHONE[1])} | | |",
            f"| **this run** | **{_num(phone['mse'])}** | **{_num(phone['pcc'])}** | {_ci(phone['ci95'])} | "
            f"{phone['n']} |", ""]


def _calibration(report: dict) -> list[str]:
    """How often the human score lies in the model's 80 % interval, per aspect (ideal 0.80)."""
    cal = report.get("calibration")
    if not cal:
        return ["Calibration: the predictions carry no score intervals (`scores_interval`).", ""]
    return ["Calibration of the 80 % intervals (`scores_interval`: the 10th-90th percentiles of each score's "
            "distribution over 0-10): the share of human scores inside them (ideal 0.80; lower: over-confident) "
            "and their mean width in score points.", "",
            "| aspect | coverage | mean width | n |", "|---|---|---|---|",
            *[f"| {a} | {_num(v['coverage'])} | {_num(v['mean_width'], 2)} | {v['n']} |" for a, v in cal.items()], ""]


def _coverage(report: dict) -> str:
    n = report["mdd"]["n"]
    if report["split"] == "test" and n == PAPER_TEST_SIZE:
        return ""
    return (f" This run scored {n} MDD answers of the {report['split']} split, not the paper's "
            f"{PAPER_TEST_SIZE:,} test utterances, so none of its numbers compare directly.")


def _ci(ci) -> str:
    return f"[{_num(ci[0])}, {_num(ci[1])}]"


def granularity_row(granularities: dict | None) -> dict[str, float | None]:
    """A report's GOPT-protocol numbers in `GRANULARITY_COLUMNS` (None where missing or undefined)."""
    g = granularities or {}
    phone, word, utt = g.get("phone") or {}, g.get("word") or {}, g.get("utterance") or {}
    row = {"phone_mse": phone.get("mse"), "phone_pcc": phone.get("pcc")}
    row |= {f"word_{a}": (word.get(a) or {}).get("pcc") for a in ("accuracy", "stress", "total")}
    row |= {f"utt_{a}": (utt.get(a) or {}).get("pcc")
            for a in ("accuracy", "completeness", "fluency", "prosodic", "total")}
    return row


def granularity_cells(row: dict) -> str:
    return " | ".join(_num(row.get(c)) for c in GRANULARITY_COLUMNS)


GRANULARITY_HEADER = ["| system | " + " | ".join(GRANULARITY_HEADERS) + " |",
                      "|---|" + "---|" * len(GRANULARITY_HEADERS)]


def granularity_section(g: dict | None) -> list[str]:
    """Phone, word and utterance agreement beside GOPT's and the later systems' published rows; says
    which granularities the predictions lack instead of showing zeros."""
    if g is None:
        return []
    missing = []
    if g["phone"] is None:
        missing.append("**phone**: no `phone_scores` on the MDD records (phone scores were not computed)")
    if g["word"] is None:
        missing.append("**word**: no word-task (`wrd`) answers in the predictions (a run with tasks "
                       "[apa, mdd, wrd] gives them)")
    if g["utterance"] is None:
        missing.append("**utterance**: no APA answers in the predictions")
    words = g.get("word") or {}
    n_words = max((v["n"] for v in words.values()), default=0)
    lines = ["## Three granularities (GOPT's protocol)", "",
             "Phone accuracy (0-2) MSE and PCC over every test phone, word accuracy / stress / total PCC over "
             "every test word, utterance PCCs. Published rows: SPEC §1 (GOPT: Gong et al., ICASSP 2022, all "
             "three granularities; 3M, HMamba and MuFFIN: their utterance scores only, as the SPEC gives them; "
             "\"–\" where no number is given). Utterance completeness is derived, not predicted: 10 × the share "
             "of the text's words that the MDD word transcript holds in order (minimum edit alignment); its PCC is "
             "undefined (\"–\") when every human completeness is the same, as for nearly all SpeechOcean762 "
             "utterances.", "", *GRANULARITY_HEADER,
             *[f"| {name} | " + " | ".join(_num(v) for v in vals) + " |" for name, *vals in GRANULARITY_SYSTEMS],
             f"| **this run** | {granularity_cells(granularity_row(g))} |", ""]
    if g.get("word_expected"):
        exp = g["word_expected"]
        lines += ["Word PCCs on the expected scores (Σ v·p(v) over the 11 value tokens, ours): " + ", ".join(
            f"{a} {_num(exp[a]['pcc'])}" for a in ("accuracy", "stress", "total")) + ".", ""]
    if n_words:
        lines += [f"{n_words} words scored"
                  + (f"; {g['word_misaligned']} word answers left out (their words are not the text's)"
                     if g["word_misaligned"] else "") + ".", ""]
    if g["phone"] and g["phone_length_mismatch"]:
        lines += [f"{g['phone_length_mismatch']} phone-score lists left out (not one score per canonical phone).", ""]
    if missing:
        lines += ["Missing from these predictions, so shown as \"–\" above, not as zeros:", "",
                  *[f"- {m}" for m in missing], ""]
    return lines
