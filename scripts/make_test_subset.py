"""Cut the test data out of the SpeechOcean762 release: the utterances that scripts/test_subset_ids.txt lists.

    python scripts/make_test_subset.py --corpus speechocean762 --out ../shared/data

`--corpus` is the release as downloaded from https://www.openslr.org/101/ and unpacked (WAVE/, train/,
test/, resource/). Writes `OUT/speechocean762/` (46 labelled utterances: the Kaldi files restricted to
them, their WAVs, resource/scores.json entry by entry, text-phone, the whole lexicon.txt) and
`OUT/speechocean762-audio/` (200 clips: text, wav.scp, utt2spk, text-phone, WAVs; no scores), where the
tests look for them (`../shared/data` beside the clone, or `PRONLM_TEST_DATA`). The Hugging Face copy
lacks the lexicon, the phone files and the utterance ids, so it cannot stand in for the release here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

IDS = Path(__file__).with_name("test_subset_ids.txt")
LABELLED = ("text", "wav.scp", "utt2spk", "spk2utt", "spk2age", "spk2gender")  # per split, as the release
AUDIO_ONLY = ("text", "wav.scp", "utt2spk")


def read_ids(path: Path = IDS) -> dict[tuple[str, str], list[str]]:
    """(folder, split) -> utterance ids, in the list's order."""
    out: dict[tuple[str, str], list[str]] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            folder, split, utt = line.split()
            out.setdefault((folder, split), []).append(utt)
    return out


def kept_lines(path: Path, keep) -> str:
    """The lines of a Kaldi file whose first field `keep` accepts (spk2utt: its listed utterances narrowed)."""
    lines = []
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(" ") if path.name == "spk2utt" else (line.split()[0], None, None)
        if path.name == "spk2utt":
            utts = [u for u in rest.split() if keep(u)]
            if utts:
                lines.append(" ".join([key, *utts]))
        elif keep(key):
            lines.append(line)
    return "".join(f"{line}\n" for line in lines)


def cut(corpus: Path, out: Path, folder: str, splits: dict[str, list[str]]) -> int:
    """Write one test-data folder; returns the number of clips."""
    wanted = {u for ids in splits.values() for u in ids}
    missing = set(wanted)
    files = LABELLED if folder == "speechocean762" else AUDIO_ONLY
    for split, ids in splits.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        spk = {line.split()[1] for line in kept_lines(corpus / split / "utt2spk", set(ids).__contains__).splitlines()}
        for name in files:
            keep = spk.__contains__ if name.startswith("spk2") and name != "spk2utt" else set(ids).__contains__
            (out / split / name).write_text(kept_lines(corpus / split / name, keep))
        for line in (out / split / "wav.scp").read_text().splitlines():
            utt, wav = line.split()
            (out / wav).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(corpus / wav, out / wav)
            missing.discard(utt)
    if missing:
        raise SystemExit(f"{corpus}: no wav.scp entry for {', '.join(sorted(missing)[:5])} and {len(missing)} "
                         "in all: give the whole release")
    (out / "resource").mkdir(parents=True, exist_ok=True)
    (out / "resource" / "text-phone").write_text(
        kept_lines(corpus / "resource" / "text-phone", lambda key: key.split(".")[0] in wanted))
    if folder == "speechocean762":
        scores = json.loads((corpus / "resource" / "scores.json").read_text())
        entries = {u: scores[u] for u in sorted(wanted)}  # the release's own key order within each entry
        (out / "resource" / "scores.json").write_text(json.dumps(entries, indent=2))
        shutil.copyfile(corpus / "resource" / "lexicon.txt", out / "resource" / "lexicon.txt")
    return len(wanted)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True, type=Path, help="the unpacked SpeechOcean762 release")
    p.add_argument("--out", required=True, type=Path, help="where speechocean762/ and speechocean762-audio/ go")
    a = p.parse_args(argv)
    if not (a.corpus / "resource" / "scores.json").is_file():
        sys.exit(f"{a.corpus} is not the SpeechOcean762 release (no resource/scores.json): unpack "
                 "speechocean762.tar.gz from https://www.openslr.org/101/ and give that folder")
    by_folder: dict[str, dict[str, list[str]]] = {}
    for (folder, split), ids in read_ids().items():
        by_folder.setdefault(folder, {})[split] = ids
    for folder, splits in by_folder.items():
        n = cut(a.corpus, a.out / folder, folder, splits)
        print(f"{a.out / folder}: {n} utterances")


if __name__ == "__main__":
    main()
