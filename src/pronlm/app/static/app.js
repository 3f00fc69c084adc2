// pronlm page: record or pick a clip, convert it to 16 kHz mono 16-bit WAV in the browser
// (the server reads WAV/FLAC/OGG, MediaRecorder gives WebM/Opus), POST /assess, show the result.
"use strict";

const RATE = 16000;
const KEY_STORE = "pronlm-api-key";  // sessionStorage: asked once, forgotten when the tab closes
const $ = (id) => document.getElementById(id);
let clip = null;        // {blob, name} to upload
let recorder = null;

function setStatus(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

function setClip(blob, name) {
  clip = {blob, name};
  $("preview").src = URL.createObjectURL(blob);
  $("preview").hidden = false;
  $("submit").disabled = false;
}

// ------------------------------------------------------------ audio -> WAV

function encodeWav(samples, rate) {
  const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, samples.length * 2, true);
  samples.forEach((x, i) => view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, x)) * 0x7fff, true));
  return new Blob([view], {type: "audio/wav"});
}

async function toWav(blob) {
  // decodeAudioData resamples to the context's rate, so a 16 kHz context does the resampling.
  const context = new OfflineAudioContext(1, 1, RATE);
  const audio = await context.decodeAudioData(await blob.arrayBuffer());
  const mono = new Float32Array(audio.length);
  for (let c = 0; c < audio.numberOfChannels; c++) {
    audio.getChannelData(c).forEach((x, i) => { mono[i] += x / audio.numberOfChannels; });
  }
  return encodeWav(mono, RATE);
}

// ------------------------------------------------------------ recording and files

async function startRecording() {
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    setStatus("Recording needs a browser with MediaRecorder on https or localhost; upload a file instead.", true);
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({audio: true});
  } catch (err) {
    setStatus(`No microphone: ${err.message}. Upload a file instead.`, true);
    return;
  }
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => chunks.push(e.data);
  recorder.onstop = async () => {
    stream.getTracks().forEach((t) => t.stop());
    try {
      setClip(await toWav(new Blob(chunks, {type: recorder.mimeType})), "recording.wav");
      setStatus("Recorded. Press Assess.");
    } catch (err) {
      setStatus(`Could not convert the recording: ${err.message}`, true);
    }
  };
  recorder.start();
  $("record").classList.add("recording");
  $("record").disabled = true;
  $("stop").disabled = false;
  setStatus("Recording… read the sentence, then press Stop.");
}

function stopRecording() {
  if (recorder && recorder.state === "recording") recorder.stop();
  $("record").classList.remove("recording");
  $("record").disabled = false;
  $("stop").disabled = true;
}

async function pickFile() {
  const file = $("file").files[0];
  if (!file) return;
  try {
    setClip(await toWav(file), file.name.replace(/\.[^.]*$/, "") + ".wav");
  } catch (err) {
    setClip(file, file.name);  // the browser cannot decode it: let the server say why
  }
  setStatus(`${file.name} ready. Press Assess.`);
}

// ------------------------------------------------------------ request

function authHeaders() {
  const typed = $("key").value.trim();
  if (typed) sessionStorage.setItem(KEY_STORE, typed);
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? {Authorization: `Bearer ${key}`} : {};
}

function askForKey(hadKey) {
  // the server answered 401: show the key field; the next Assess sends what is typed there
  sessionStorage.removeItem(KEY_STORE);
  $("key").value = "";
  $("key-row").hidden = false;
  $("key").focus();
  setStatus(hadKey ? "That API key was not accepted: enter it again, then press Assess."
                   : "This server needs an API key: enter it, then press Assess.", true);
}

async function submit(event) {
  event.preventDefault();
  const text = $("text").value.trim();  // empty: free speech, judged against the words the model heard
  if (!clip) { setStatus("Record or choose a clip first.", true); return; }
  const form = new FormData();
  if (text) form.append("text", text);
  form.append("audio", clip.blob, clip.name);
  $("submit").disabled = true;
  setStatus("Assessing…");
  try {
    const headers = authHeaders();
    const response = await fetch("/assess", {method: "POST", body: form, headers});
    if (response.status === 401) { askForKey("Authorization" in headers); return; }
    $("key-row").hidden = true;
    $("key").value = "";
    const body = await response.json().catch(() => ({detail: response.statusText}));
    if (!response.ok) {
      const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      setStatus(`Error ${response.status}: ${detail}`, true);
      return;
    }
    render(body);
    setStatus("");
  } catch (err) {
    setStatus(`The server could not be reached: ${err.message}`, true);
  } finally {
    $("submit").disabled = false;
  }
}

// ------------------------------------------------------------ result

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// The expected score (probability-weighted, one decimal) where the model gave one, else its integer;
// under it the spread (± standard deviation, the 80 % interval) and the interval shaded on the bar.
function renderScores(result) {
  const {scores, scores_expected: expected, scores_sd: sd, scores_interval: interval} = result;
  const box = $("scores");
  box.replaceChildren();
  for (const name of ["accuracy", "fluency", "prosodic", "total"]) {
    const value = expected ? expected[name] : scores ? scores[name] : null;
    const card = el("div", "score");
    const shown = value === null ? "—" : expected ? value.toFixed(1) : `${value}`;
    card.append(el("div", "name", name), el("div", "value", shown));
    if (expected && scores) card.title = `expected ${value.toFixed(2)}; the model's integer answer: ${scores[name]}`;
    const bar = el("div", "bar");
    if (sd && interval && value !== null) {
      const [low, high] = interval[name];
      card.append(el("div", "spread", `± ${sd[name].toFixed(1)} · 80 %: ${low}–${high}`));
      const band = el("div", "band");
      band.style.left = `${low * 10}%`;
      band.style.width = `${Math.max(high - low, 0.15) * 10}%`;
      bar.append(band);
    }
    const fill = el("div", "fill");
    fill.style.width = `${value === null ? 0 : value * 10}%`;
    bar.append(fill);
    card.append(bar);
    box.append(card);
  }
}

// Graded colour for a 0-100 phone score: red (0) through amber (50) to green (100).
function scoreColour(accuracy) {
  return `hsl(${Math.round(1.2 * accuracy)}, 70%, 88%)`;
}

function meanAccuracy(w) {
  const scores = w.phone_scores || [];
  return scores.length ? scores.reduce((sum, p) => sum + p.accuracy, 0) / scores.length : null;
}

function wordClass(w) {
  return `word ${w.error_type === "None" ? "ok" : w.error_type.toLowerCase()}${w.known ? "" : " unknown"}`;
}

function phoneSpans(phones, judged) {
  // an unknown word has nothing to compare with: what was heard there is shown as it is
  const cell = el("td");
  for (const p of phones) {
    const label = {correct: p.heard, substituted: `${p.expected}→${p.heard}`,
                   deleted: p.expected, inserted: judged ? `+${p.heard}` : p.heard}[p.status];
    const span = el("span", judged ? `phone ${p.status}` : "phone", label);
    span.title = p.status;
    cell.append(span);
  }
  if (!phones.length) cell.textContent = "—";
  return cell;
}

// The expected phones, each on its score's colour with the score (0-100) beside it.
function scoreSpans(w) {
  const cell = el("td", "phone-scores");
  for (const p of w.phone_scores || []) {
    const span = el("span", "phone scored", p.phone);
    span.style.background = scoreColour(p.accuracy);
    span.append(el("sub", "", `${p.accuracy}`));
    span.title = `${p.phone}: ${p.accuracy}/100` + (p.likely !== p.phone ? `, sounds most like ${p.likely}` : "");
    cell.append(span);
  }
  if (!cell.children.length) cell.textContent = "—";
  return cell;
}

function expectedCell(w) {
  const cell = el("td", "phone", w.expected_phones.join(" ") || "—");
  if ((w.variants || []).length > 1) {
    cell.append(el("span", "variant", ` pronunciation ${w.variant + 1} of ${w.variants.length}`));
  }
  return cell;
}

function renderWords(words) {
  const sentence = $("sentence");
  const rows = $("details").querySelector("tbody");
  sentence.replaceChildren();
  rows.replaceChildren();
  const scored = words.some(w => w.phone_scores);
  const wordScores = words.some(w => w.scores);
  $("details").querySelector("th.phone-scores").hidden = !scored;
  $("details").querySelector("th.word-scores").hidden = !wordScores;
  for (const w of words) {
    const span = el("span", wordClass(w), w.error_type === "Insertion" ? `+${w.word}` : w.word);
    const mean = meanAccuracy(w);
    if (mean !== null && w.error_type !== "Omission") span.style.background = scoreColour(mean);
    span.title = `${w.error_type}: expected ${w.expected_phones.join(" ") || "—"}, heard ${w.heard_phones.join(" ") || "—"}` +
                 (mean === null ? "" : `; sounds ${Math.round(mean)}/100`);
    sentence.append(span, " ");
    // with phone scores every judged word has a row; without, only the problems
    const plain = (w.error_type === "None" && w.known && !w.phone_scores) || (w.error_type === "NotJudged" && !w.phone_scores);
    if (plain) continue;
    const row = el("tr");
    row.append(el("td", wordClass(w), w.word),
               el("td", "", w.known ? w.error_type : `${w.error_type === "None" ? "not judged" : w.error_type}` +
                                                      " (not in the dictionary)"),
               expectedCell(w),
               phoneSpans(w.phones, w.known || w.error_type === "Insertion"));
    if (scored) row.append(scoreSpans(w));
    if (wordScores) {
      row.append(el("td", "", w.scores ? Object.entries(w.scores).map(([k, v]) => `${k} ${v}`).join(" · ") : "—"));
    }
    rows.append(row);
  }
  $("details").hidden = !rows.children.length;
}

function renderProblems(result) {
  const box = $("problems");
  box.replaceChildren();
  const names = {apa: "scores", mdd: "sounds heard"};
  for (const e of result.errors) {
    box.append(el("p", "", `The model's answer for the ${names[e.task] || e.task} could not be read (${e.error}); ` +
                           (e.task === "apa" ? "no scores." : "word feedback is not reliable.")));
  }
  if (result.reference === "model") {
    box.append(el("p", "", "No sentence given: judged against the words the model heard, " +
                           "so a word left out cannot be told."));
  }
  if (result.unknown_words.length) {
    box.append(el("p", "", `Not in the dictionary, so not judged: ${result.unknown_words.join(", ")}.`));
  }
  box.hidden = !box.children.length;
}

function render(result) {
  renderProblems(result);
  renderScores(result);
  renderWords(result.words);
  $("heard-words").textContent = result.word_transcript || "—";
  $("heard-phones").textContent = result.phoneme_transcript || "—";
  $("result").hidden = false;
}

$("record").addEventListener("click", startRecording);
$("stop").addEventListener("click", stopRecording);
$("file").addEventListener("change", pickFile);
$("form").addEventListener("submit", submit);
