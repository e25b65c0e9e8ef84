// The demo page: POST /v1/translate with attention, show the translation, the n-best
// list and an attention heatmap (source pieces as columns, target pieces as rows).
"use strict";

const $ = (id) => document.getElementById(id);

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function loadModel() {
  try {
    const response = await fetch("/v1/model");
    const info = await response.json();
    if (!response.ok) throw new Error(info.error || response.statusText);
    $("pair").textContent = `${info.source} → ${info.target}`;
    const parts = [`${(info.parameters / 1e6).toFixed(1)} M parameters`,
                   `beam ${info.decode.beam_size}`,
                   `length penalty ${info.decode.length_penalty}`];
    if (info.test && info.test.bleu !== undefined) parts.push(`test BLEU ${info.test.bleu}`);
    parts.push(`batches of up to ${info.serving.max_batch}`);
    $("model-info").textContent = parts.join(" · ");
    $("beam-size").value = info.decode.beam_size;
    $("n-best").value = info.decode.beam_size;
    $("source").maxLength = info.serving.max_chars * info.serving.max_sentences;
  } catch (err) {
    $("model-info").textContent = "";
    showError(`Could not read the model's details: ${err.message}`);
  }
}

function piece(text) {
  // SentencePiece marks a word start with U+2581; it is shown, muted
  const span = document.createElement("span");
  span.className = "piece";
  if (text.startsWith("\u2581")) {
    const mark = document.createElement("span");
    mark.className = "ws";
    mark.textContent = "\u2581";
    span.append(mark, text.slice(1));
  } else {
    span.textContent = text;
  }
  return span;
}

function heatmap(result) {
  const table = document.createElement("table");
  table.className = "heatmap";
  table.setAttribute("aria-label", "attention weights, target pieces by source pieces");
  const head = table.createTHead().insertRow();
  head.appendChild(document.createElement("th"));
  for (const src of result.source_pieces) {
    const th = document.createElement("th");
    th.scope = "col";
    th.className = "col";
    th.appendChild(piece(src));
    head.appendChild(th);
  }
  const body = table.createTBody();
  const readout = document.createElement("p");
  readout.className = "readout muted";
  readout.textContent = "\u00a0";
  result.attention.forEach((row, i) => {
    const tr = body.insertRow();
    const th = document.createElement("th");
    th.scope = "row";
    th.appendChild(piece(result.target_pieces[i]));
    tr.appendChild(th);
    row.forEach((weight, j) => {
      const td = tr.insertCell();
      const value = weight.toFixed(3);
      td.style.backgroundColor = `rgba(29, 78, 216, ${Math.min(1, Math.max(0, weight))})`;
      td.title = `${result.target_pieces[i]} ← ${result.source_pieces[j]}: ${value}`;
      td.dataset.weight = value;
      td.addEventListener("mouseenter", () => { readout.textContent = td.title; });
    });
  });
  const title = document.createElement("h3");
  title.textContent = "attention";
  const about = document.createElement("p");
  about.className = "about muted";
  about.innerHTML = "Rows: target pieces; columns: source pieces. "
    + '<span class="legend">0 <span class="ramp"></span> 1</span> Hover a cell for its weight.';
  const wrap = document.createElement("div");
  wrap.className = "heatmap-wrap";
  wrap.appendChild(table);
  const box = document.createElement("div");
  box.append(title, about, wrap, readout);
  return box;
}

function resultCard(source, result, index) {
  const card = document.createElement("section");
  card.className = "result";
  card.dataset.index = index;
  const src = document.createElement("p");
  src.className = "source muted";
  src.textContent = source;
  card.appendChild(src);
  const out = document.createElement("p");
  out.className = "translation";
  out.id = `translation-${index}`;
  out.textContent = result.text;
  card.appendChild(out);
  if (result.source_too_long) {
    const note = document.createElement("p");
    note.className = "note";
    note.textContent = "Longer than anything the model was trained on: the translation may be cut short.";
    card.appendChild(note);
  }
  if (result.n_best.length) {
    const h = document.createElement("h3");
    h.textContent = "n-best";
    card.appendChild(h);
    const list = document.createElement("ol");
    list.className = "nbest";
    for (const hyp of result.n_best) {
      const li = document.createElement("li");
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = hyp.text;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = hyp.score.toFixed(3);
      li.append(text, score);
      list.appendChild(li);
    }
    card.appendChild(list);
  }
  if (result.attention && result.attention.length) card.appendChild(heatmap(result));
  return card;
}

async function translate() {
  const lines = $("source").value.split("\n").map((s) => s.trim()).filter((s) => s);
  showError("");
  if (!lines.length) {
    showError("Type a sentence to translate.");
    return;
  }
  const body = {sentences: lines, attention: true};
  const beam = parseInt($("beam-size").value, 10);
  const nBest = parseInt($("n-best").value, 10);
  if (!Number.isNaN(beam)) body.beam_size = beam;
  if (!Number.isNaN(nBest)) body.n_best = Math.min(nBest, Number.isNaN(beam) ? nBest : beam);
  const button = $("translate");
  button.disabled = true;
  $("status").textContent = "translating…";
  document.body.setAttribute("aria-busy", "true");
  const started = performance.now();
  try {
    const response = await fetch("/v1/translate", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify(body),
    });
    let data;
    try {
      data = await response.json();
    } catch (err) {
      throw new Error(`${response.status} ${response.statusText}`);
    }
    if (!response.ok) throw new Error(`${response.status}: ${data.error || response.statusText}`);
    const results = $("results");
    results.classList.remove("stale");
    results.replaceChildren(...data.translations.map((r, i) => resultCard(lines[i], r, i)));
    $("status").textContent = `${lines.length} sentence${lines.length > 1 ? "s" : ""} in `
      + `${Math.round(performance.now() - started)} ms`;
  } catch (err) {
    $("status").textContent = "";
    $("results").classList.add("stale");  // what is shown is not for this text
    showError(`Translation failed: ${err.message}`);
  } finally {
    button.disabled = false;
    document.body.removeAttribute("aria-busy");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  loadModel();
  $("form").addEventListener("submit", (event) => {
    event.preventDefault();
    translate();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      translate();
    }
  });
});
