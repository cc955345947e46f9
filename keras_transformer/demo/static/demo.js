// The demo page: asks the server (JSON endpoints under /api/) and draws with plotly.js (served by the demo).
"use strict";

const FONT = '"NanumGothic", "DejaVu Sans", sans-serif';
const PLOT_CONFIG = { displaylogo: false, responsive: true, displayModeBar: "hover" };
const KIND_TEXT = {
  cross_attention: "Row i: where the decoder looked in the source while producing target token i.",
  decoder_self_attention: "Row i: which of the tokens read so far (<s> and earlier outputs) the decoder used " +
    "to produce target token i; the look-ahead mask hides later ones.",
  encoder_self_attention: "Row i: which source tokens the encoder mixed into source token i.",
};
const ROLE_LABEL = { target: "target (output)", source: "source", decoder_input: "decoder input" };

const state = { info: null, translation: null, attention: null, hoveredRow: null };
const $ = (id) => document.getElementById(id);
// Plotly reads its strings as a little HTML: "<s>" would strike the text through and "</s>" would vanish.
const plotlyText = (text) => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

// ---------------------------------------------------------------------------------------------- server
async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.error || `${response.status} ${response.statusText}`);
  return answer;
}

function setStatus(text, stateName) {
  const status = $("status");
  status.textContent = text;
  status.dataset.state = stateName;
  $("translate-button").disabled = stateName === "busy";
}

function layout(extra) {
  return Object.assign({ font: { family: FONT, size: 13 }, margin: { t: 30, r: 20, b: 50, l: 60 } }, extra);
}

// ---------------------------------------------------------------------------------------------- translate
function strategy() {
  return document.querySelector('input[name="strategy"]:checked').value;
}

function showStrategyOptions() {
  $("beam-options").hidden = strategy() !== "beam";
  $("sample-options").hidden = strategy() !== "sample";
}

function translateRequest() {
  const request = { text: $("source").value, strategy: strategy() };
  const number = (id) => Number($(id).value);
  if (request.strategy === "beam") {
    Object.assign(request, { beam_size: number("beam-size"), alpha: number("alpha") });
  } else if (request.strategy === "sample") {
    Object.assign(request, {
      temperature: number("temperature"), top_k: number("top-k"), top_p: number("top-p"), seed: number("seed"),
    });
  }
  return request;
}

async function translate(event) {
  event.preventDefault();
  setStatus("Translating…", "busy");
  try {
    state.translation = await api("/api/translate", translateRequest());
    showHypotheses();
    await selectHypothesis(0);
    const t = state.translation;
    const note = t.truncated ? ` The sentence was cut to ${state.info.max_length - 1} tokens.` : "";
    setStatus(`Translated in ${t.seconds.toFixed(2)} s (${t.strategy}).${note}`, "ready");
  } catch (error) {
    setStatus(error.message, "error");
  }
}

function showHypotheses() {
  const body = $("hypotheses").querySelector("tbody");
  body.replaceChildren();
  state.translation.hypotheses.forEach((hypothesis, index) => {
    const row = body.insertRow();
    row.insertCell().textContent = String(index + 1);
    row.insertCell().textContent = hypothesis.text || "(empty: only </s>)";
    row.insertCell().textContent = hypothesis.score.toFixed(3);
    row.addEventListener("click", () => selectHypothesis(index).catch((error) => setStatus(error.message, "error")));
  });
  $("result").hidden = false;
}

async function selectHypothesis(index) {
  const hypothesis = state.translation.hypotheses[index];
  $("translation").textContent = hypothesis.text || "(empty translation)";
  $("hypotheses").querySelectorAll("tbody tr").forEach((row, i) => row.classList.toggle("selected", i === index));
  state.attention = await api("/api/attention", { source: state.translation.source, target: hypothesis.text });
  $("attention-panel").hidden = false;
  await drawAttention();
}

// ---------------------------------------------------------------------------------------------- attention
function selectedMatrix() {
  const kind = state.attention.attention[$("attention-kind").value];
  const heads = kind.weights[Number($("layer").value)];
  const head = $("head").value;
  if (head !== "mean") return heads[Number(head)];
  return heads[0].map((row, i) => row.map((_, j) => heads.reduce((sum, h) => sum + h[i][j], 0) / heads.length));
}

function drawAttention() {
  const kindName = $("attention-kind").value;
  const kind = state.attention.attention[kindName];
  const rows = state.attention.tokens[kind.rows];
  const columns = state.attention.tokens[kind.columns];
  const z = selectedMatrix();
  const headText = $("head").value === "mean" ? "mean of heads" : `head ${Number($("head").value) + 1}`;
  $("attention-hint").textContent = `${KIND_TEXT[kindName]} Hover a row token or the heatmap to highlight the ` +
    `tokens it attends to.`;
  $("row-label").textContent = ROLE_LABEL[kind.rows];
  $("column-label").textContent = ROLE_LABEL[kind.columns];
  drawTokens($("row-tokens"), rows, (i) => highlightRow(i));
  drawTokens($("column-tokens"), columns, null);

  // Numeric axes with token tick labels: a categorical axis would merge repeated tokens into one row.
  const hover = rows.map((r) => columns.map((c) => plotlyText(`${r} → ${c}`)));
  const plot = $("attention-plot");
  const trace = {
    type: "heatmap", z, x: columns.map((_, j) => j), y: rows.map((_, i) => i), text: hover,
    hovertemplate: "%{text}<br>weight %{z:.3f}<extra></extra>", colorscale: "Viridis", zmin: 0,
    zmax: Math.max(1e-6, ...z.flat()), colorbar: { title: { text: "weight" } },
  };
  const axis = (tokens, extra) => Object.assign({
    tickmode: "array", tickvals: tokens.map((_, i) => i), ticktext: tokens.map(plotlyText), automargin: true,
  }, extra);
  plot.dataset.ready = "false";
  return Plotly.react(plot, [trace], layout({
    title: { text: `${$("attention-kind").selectedOptions[0].text}, layer ${Number($("layer").value) + 1}, ${headText}` },
    xaxis: axis(columns, { tickangle: "auto", tickfont: { size: 14 } }),
    yaxis: axis(rows, { autorange: "reversed", tickfont: { size: 14 } }),
    height: Math.max(280, 34 * rows.length + 150),
    margin: { t: 40, r: 20, b: 40, l: 40 },
  }), PLOT_CONFIG).then(() => {
    if (!plot.dataset.hoverBound) {
      plot.on("plotly_hover", (event) => highlightRow(event.points[0].y));
      plot.on("plotly_unhover", () => highlightRow(null));
      plot.dataset.hoverBound = "true";
    }
    highlightRow(null);
    // Read by the browser test: what the heatmap shows right now.
    Object.assign(plot.dataset, {
      rows: String(z.length), columns: String(z[0].length), kind: kindName,
      layer: $("layer").value, head: $("head").value, ready: "true",
    });
  });
}

function drawTokens(container, tokens, onHover) {
  container.replaceChildren(...tokens.map((token, i) => {
    const chip = document.createElement("span");
    chip.className = "token";
    chip.textContent = token;
    if (onHover) {
      chip.addEventListener("mouseenter", () => onHover(i));
      chip.addEventListener("mouseleave", () => onHover(null));
    }
    return chip;
  }));
}

// Colours the column tokens by the weights of row `row` (null clears) and outlines that row in the heatmap.
function highlightRow(row) {
  state.hoveredRow = row;
  const rowChips = $("row-tokens").children;
  const columnChips = $("column-tokens").children;
  Array.from(rowChips).forEach((chip, i) => chip.classList.toggle("active", i === row));
  const weights = row === null ? null : selectedMatrix()[row];
  const top = weights ? Math.max(1e-6, ...weights) : 1;
  Array.from(columnChips).forEach((chip, j) => {
    chip.style.background = weights ? `rgba(232, 89, 12, ${(weights[j] / top).toFixed(3)})` : "";
    chip.title = weights ? `weight ${weights[j].toFixed(3)}` : "";
  });
  const columns = columnChips.length;
  const shapes = row === null ? [] : [{
    type: "rect", xref: "x", yref: "y", x0: -0.5, x1: columns - 0.5, y0: row - 0.5, y1: row + 0.5,
    line: { color: "#e8590c", width: 3 },
  }];
  Plotly.relayout($("attention-plot"), { shapes });
}

function fillSelect(select, options) {
  select.replaceChildren(...options.map(([value, text]) => new Option(text, value)));
}

// ---------------------------------------------------------------------------------------------- the run
async function drawRun() {
  const [encoding, schedule, curves] = await Promise.all([
    api("/api/positional-encoding"), api("/api/learning-rate"), api("/api/training-curves"),
  ]);
  Plotly.newPlot("positional-encoding-plot", [{
    type: "heatmap", z: encoding.values, colorscale: "RdBu", zmin: -1, zmax: 1,
    hovertemplate: "position %{y}, depth %{x}: %{z:.3f}<extra></extra>",
  }], layout({
    xaxis: { title: { text: `depth (embedding dimension, d_model ${encoding.d_model})` } },
    yaxis: { title: { text: `position (max_length ${encoding.length})` }, autorange: "reversed" }, height: 360,
    margin: { t: 10, r: 20, b: 50, l: 60 },
  }), PLOT_CONFIG);

  if (!schedule.available) {
    $("learning-rate-plot").textContent = schedule.reason;
  } else {
    const peak = schedule.steps.indexOf(schedule.warmup_steps);
    const traces = [
      { x: schedule.steps, y: schedule.rates, mode: "lines", name: "WarmupSchedule" },
      { x: [schedule.warmup_steps], y: [schedule.rates[peak]], mode: "markers", name: `peak at step ${schedule.warmup_steps}`,
        marker: { size: 9, color: "#c92a2a" } },
    ];
    if (schedule.recorded_steps.length) {
      traces.push({ x: schedule.recorded_steps, y: schedule.recorded_rates, mode: "markers", name: "recorded (end of epoch)",
        marker: { symbol: "x", size: 8, color: "#2b8a3e" } });
    }
    const stopped = schedule.trained_steps ? [{ type: "line", x0: schedule.trained_steps, x1: schedule.trained_steps,
      yref: "paper", y0: 0, y1: 1, line: { dash: "dot", color: "#888" } }] : [];
    $("learning-rate-caption").textContent = `lrate = ${schedule.scale} · d_model^-0.5 · min(step^-0.5, ` +
      `step · warmup^-1.5) with d_model ${schedule.d_model}, warmup ${schedule.warmup_steps}` +
      (schedule.trained_steps ? `; this run stopped at step ${schedule.trained_steps} (dotted line).` : ".");
    Plotly.newPlot("learning-rate-plot", traces, layout({
      xaxis: { title: { text: "step" } }, yaxis: { title: { text: "learning rate" }, exponentformat: "e" },
      shapes: stopped, height: 360, legend: { orientation: "h", y: -0.25 }, margin: { t: 10, r: 20, b: 50, l: 70 },
    }), PLOT_CONFIG);
  }

  if (!curves.available) {
    $("training-curves-plot").textContent = curves.reason;
    return;
  }
  const traces = [];
  const panels = curves.panels.length;
  const extra = {
    grid: { rows: 1, columns: panels, pattern: "independent", xgap: 0.12 }, height: 320, annotations: [],
    legend: { orientation: "h", y: -0.3 }, margin: { t: 30, r: 20, b: 40, l: 60 },
  };
  curves.panels.forEach((panel, p) => {
    const suffix = p === 0 ? "" : String(p + 1);
    panel.series.forEach((series) => traces.push({
      x: curves.epochs, y: series.values, name: series.name, mode: "lines+markers", xaxis: `x${suffix}`, yaxis: `y${suffix}`,
      line: { dash: series.name.startsWith("val_") ? "dash" : "solid" },
    }));
    extra[`xaxis${suffix}`] = { title: { text: "epoch" }, dtick: 1 };
    extra.annotations.push({ text: panel.title, showarrow: false, xref: `x${suffix} domain`, yref: `y${suffix} domain`,
      x: 0, xanchor: "left", y: 1.12, font: { size: 14 } });  // left: the mode bar sits on the right
  });
  Plotly.newPlot("training-curves-plot", traces, layout(extra), PLOT_CONFIG);
}

// ---------------------------------------------------------------------------------------------- start
async function start() {
  // Plotly measures text when it draws: load the Hangul font first so the axes are laid out with it.
  await document.fonts.load('16px "NanumGothic"', "한글").catch(() => []);
  state.info = await api("/api/info");
  const info = state.info;
  $("model-info").textContent = `run ${info.run_name}: ${info.num_layers} layers, ${info.num_heads} heads, ` +
    `d_model ${info.d_model}, max_length ${info.max_length}, vocabularies ${info.source_vocab_size} / ${info.target_vocab_size}`;
  $("source").value = info.default_sentence;
  $("top-k").max = String(info.target_vocab_size);
  fillSelect($("layer"), Array.from({ length: info.num_layers }, (_, i) => [String(i), `${i + 1} of ${info.num_layers}`]));
  $("layer").value = String(info.num_layers - 1);
  fillSelect($("head"), [...Array.from({ length: info.num_heads }, (_, i) => [String(i), `${i + 1}`]), ["mean", "mean of heads"]]);
  for (const id of ["attention-kind", "layer", "head"]) $(id).addEventListener("change", drawAttention);
  document.querySelectorAll('input[name="strategy"]').forEach((input) => input.addEventListener("change", showStrategyOptions));
  $("translate-form").addEventListener("submit", translate);
  setStatus("Ready: type a sentence and press Translate.", "idle");
  await drawRun();
}

document.addEventListener("DOMContentLoaded", () => start().catch((error) => setStatus(error.message, "error")));
