// The lensd dashboard: pick a model, run a prompt, look at its attention
// heads, its next-token predictions and where a logit difference comes from.
// State lives in the URL (model, prompt, layer, locked head, position,
// answers), so a reload or a shared link shows the same view.

import { busy, get, onBusy, post, tensor } from "./api.js";
import { cellAt, drawFocus, drawThumbnail, isMasked, palette } from "./attention.js";
import { headHeatmap, heatmap, lineChart } from "./charts.js";
import { startSweep } from "./patch.js";
import { displayToken, highlightStrip, renderStrip } from "./tokens.js";

const $ = (id) => document.getElementById(id);

// Starting points for the bundled demo models (models/*/README.md).
const EXAMPLES = {
  "induction-2l": {
    prompt: "The cat sat on the mat. The cat sat on the m", answer: "a", wrong: "e",
    corrupted: "The cat sat on the met. The cat sat on the m",
  },
  brackets: { prompt: "(()())", answer: "#1", wrong: "#0", pos: 0, corrupted: "(()()(" },
};
// Above this many heads the page opens on layer 0 rather than all layers.
const ALL_LAYERS_MAX_HEADS = 48;
const TOP_K = 10;

const state = {
  models: [],     // /v1/models entries
  model: null,    // the chosen entry
  run: null,      // {prompt, tokens, strTokens, T, layers, heads, patterns: {"L,H": Float32Array}}
  preview: null,  // {layer, head} under the mouse
  locked: null,   // {layer, head} clicked
  hoverPos: null, // token position under the mouse
  pos: null,      // position for predictions and logit difference (null: the last)
};

// ---- URL state

function readUrl() {
  const q = new URLSearchParams(location.search);
  const head = /^L(\d+)H(\d+)$/.exec(q.get("head") || "");
  return {
    model: q.get("model"),
    prompt: q.get("prompt"),
    layer: q.get("layer"),
    locked: head ? { layer: Number(head[1]), head: Number(head[2]) } : null,
    pos: q.has("pos") ? Number(q.get("pos")) : null,
    answer: q.get("answer"),
    wrong: q.get("wrong"),
    corrupted: q.get("corrupted"),
  };
}

function writeUrl() {
  const q = new URLSearchParams();
  if (state.model) q.set("model", state.model.name);
  if ($("prompt").value) q.set("prompt", $("prompt").value);
  q.set("layer", $("layer").value);
  if (state.locked) q.set("head", `L${state.locked.layer}H${state.locked.head}`);
  if (state.pos !== null) q.set("pos", state.pos);
  if ($("answer").value) q.set("answer", $("answer").value);
  if ($("wrong").value) q.set("wrong", $("wrong").value);
  if ($("corrupted").value) q.set("corrupted", $("corrupted").value);
  history.replaceState(null, "", `?${q}`);
}

// ---- errors and progress

function showError(e) {
  $("error").textContent = e ? String(e.message || e) : "";
  $("error").hidden = !e;
}

let busySince = 0;
onBusy((count) => {
  document.body.dataset.busy = count; // "0" once everything asked for is drawn (the browser tests wait for it)
  $("busy").hidden = count === 0;
  if (count > 0 && !busySince) {
    busySince = performance.now();
    const tick = () => {
      if (!busySince) return;
      $("busy-text").textContent = `running… ${((performance.now() - busySince) / 1000).toFixed(1)} s`;
      requestAnimationFrame(tick);
    };
    tick();
  }
  if (count === 0) busySince = 0;
});

// ---- model

const modelPath = (suffix) => `/v1/models/${encodeURIComponent(state.model.name)}/${suffix}`;
const causal = () => state.model.config.attention_dir !== "bidirectional";

function chooseModel(name, keepInputs) {
  state.model = state.models.find((m) => m.name === name) || state.models[0];
  $("model").value = state.model.name;
  const c = state.model.config;
  $("model-info").textContent = `${state.model.name}: ${c.n_layers} layers, ${c.n_heads} heads, d_model ${c.d_model}, ` +
    `${c.attention_dir} attention, vocabulary ${c.d_vocab}, n_ctx ${c.n_ctx}, device ${state.model.device.name}`;
  const layer = $("layer");
  layer.replaceChildren(new Option("all layers", "all"), ...Array.from({ length: c.n_layers }, (_, l) => new Option(`layer ${l}`, l)));
  layer.value = c.n_layers * c.n_heads <= ALL_LAYERS_MAX_HEADS ? "all" : "0";
  if (!keepInputs) {
    const example = EXAMPLES[state.model.name] || {};
    $("prompt").value = example.prompt || "";
    $("answer").value = example.answer || "";
    $("wrong").value = example.wrong || "";
    $("corrupted").value = example.corrupted || "";
    state.pos = example.pos ?? null;
    state.locked = null;
  }
}

// ---- running a prompt

/** Runs the prompt: tokens, attention, predictions and (with answers) the logit difference. */
const runPrompt = () => busy(async () => {
  showError(null);
  writeUrl();
  const prompt = $("prompt").value;
  if (!prompt) return;
  const layerChoice = $("layer").value;
  try {
    const body = { prompt };
    if (layerChoice !== "all") body.layers = [Number(layerChoice)];
    const attention = await post(modelPath("attention"), body);
    const patterns = tensor(attention.patterns);
    const [, , T] = patterns.shape;
    const byHead = {};
    attention.layers.forEach((layer, li) => attention.heads.forEach((head, hi) => {
      const offset = (li * attention.heads.length + hi) * T * T;
      byHead[`${layer},${head}`] = patterns.data.subarray(offset, offset + T * T);
    }));
    state.run = { prompt, strTokens: attention.str_tokens, T, layers: attention.layers, heads: attention.heads, patterns: byHead };
    if (state.pos !== null && state.pos >= T) state.pos = null;
    if (state.locked && !byHead[`${state.locked.layer},${state.locked.head}`]) state.locked = null;
    drawTokens();
    drawHeads();
    drawFocused();
    await Promise.all([runPredictions(), runLogitDiff()]);
  } catch (e) {
    showError(e);
  }
});

const position = () => (state.pos === null ? state.run.T - 1 : state.pos);

function describePosition(p) {
  return `at position ${p} (${displayToken(state.run.strTokens[p])})`;
}

async function runPredictions() {
  const p = position();
  $("predictions-where").textContent = `next token ${describePosition(p)}`;
  const k = Math.min(TOP_K, state.model.config.d_vocab_out);
  const answer = await post(modelPath("logits"), { prompt: state.run.prompt, positions: [p], top_k: k });
  const ids = tensor(answer.top_k_ids).data;
  const probs = tensor(answer.top_k_probs).data;
  let names = Array.from(ids, (id) => `#${id}`);
  if (state.model.config.d_vocab_out === state.model.config.d_vocab) {
    names = (await post(modelPath("detokenize"), { tokens: Array.from(ids, (id) => [id]) })).text;
  }
  const list = $("predictions");
  list.replaceChildren(...Array.from(ids, (id, i) => {
    const li = document.createElement("li");
    li.dataset.id = id;
    li.dataset.prob = probs[i];
    const tok = document.createElement("span");
    tok.className = "tok";
    tok.textContent = displayToken(names[i]);
    tok.title = `id ${id}`;
    const bar = document.createElement("div");
    bar.className = "prob-bar";
    bar.style.width = `${(probs[i] * 100).toFixed(1)}%`;
    const prob = document.createElement("span");
    prob.className = "prob";
    prob.textContent = `${(probs[i] * 100).toFixed(2)}%`;
    li.append(tok, bar, prob);
    return li;
  }));
}

/** "#12" is token id 12; anything else a token string. */
const parseAnswer = (s) => (/^#\d+$/.test(s) ? Number(s.slice(1)) : s);

async function runLogitDiff() {
  const answer = $("answer").value;
  const wrong = $("wrong").value;
  $("lens-chart").replaceChildren();
  $("head-attr").replaceChildren();
  $("logit-diff-value").textContent = "";
  if (!answer || !wrong || !state.run) return;
  const p = position();
  $("logit-diff-where").textContent = describePosition(p);
  const result = await post(modelPath("logit_diff"), {
    prompt: state.run.prompt,
    answers: [parseAnswer(answer), parseAnswer(wrong)],
    position: p,
    attribution: ["accumulated_resid", "heads"],
  });
  $("logit-diff-value").textContent = `logit(${answer}) − logit(${wrong}) = ${result.logit_diff[0].toFixed(4)}`;
  lineChart($("lens-chart"), result.accumulated_resid.labels, result.accumulated_resid.mean);
  headHeatmap($("head-attr"), result.heads.grid, (layer, head) => lockHead({ layer, head }, true));
}

// ---- drawing

function drawTokens() {
  renderStrip($("tokens"), state.run.strTokens, position(), {
    onHover: (pos) => {
      state.hoverPos = pos;
      highlight();
    },
    onSelect: (pos) => busy(async () => {
      state.pos = pos;
      writeUrl();
      drawTokens();
      showError(null);
      try {
        await Promise.all([runPredictions(), runLogitDiff()]);
      } catch (e) {
        showError(e);
      }
    }),
  });
}

const focused = () => state.preview || state.locked || { layer: state.run.layers[0], head: state.run.heads[0] };
const patternOf = (h) => state.run.patterns[`${h.layer},${h.head}`];

function drawHeads() {
  const box = $("heads");
  box.replaceChildren();
  for (const layer of state.run.layers) {
    for (const head of state.run.heads) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "head";
      button.dataset.layer = layer;
      button.dataset.head = head;
      button.setAttribute("aria-label", `layer ${layer} head ${head}`);
      const canvas = document.createElement("canvas");
      const name = document.createElement("span");
      name.textContent = `L${layer}H${head}`;
      button.append(canvas, name);
      button.addEventListener("mouseenter", () => {
        state.preview = { layer, head };
        drawFocused();
      });
      button.addEventListener("mouseleave", () => {
        state.preview = null;
        drawFocused();
      });
      button.addEventListener("click", () => lockHead({ layer, head }, false));
      box.append(button);
    }
  }
  highlight();
}

/** Locks head h. A thumbnail's click (fromElsewhere false) toggles: it
 *  unlocks a head that is locked already. From the heatmap, a head of a
 *  layer not on show switches the grid to all layers. */
function lockHead(h, fromElsewhere) {
  const same = state.locked && state.locked.layer === h.layer && state.locked.head === h.head;
  if (fromElsewhere && !patternOf(h)) {
    $("layer").value = "all";
    state.locked = h;
    runPrompt();
    return;
  }
  state.locked = same && !fromElsewhere ? null : h;
  state.preview = null;
  writeUrl();
  drawFocused();
}

function drawFocused() {
  if (!state.run) return;
  const h = focused();
  const canvas = $("focus");
  drawFocus(canvas, patternOf(h), state.run.strTokens, causal(), state.hoverPos);
  canvas.dataset.layer = h.layer;
  canvas.dataset.head = h.head;
  const how = state.preview ? "preview" : state.locked ? "locked" : "first head";
  $("focus-title").textContent = `L${h.layer}H${h.head} (${how}): blocks.${h.layer}.attn.hook_pattern[0, ${h.head}]`;
  for (const b of $("heads").children) {
    const here = Number(b.dataset.layer) === h.layer && Number(b.dataset.head) === h.head;
    b.classList.toggle("previewed", here && state.preview !== null);
    b.classList.toggle("locked", !!state.locked && Number(b.dataset.layer) === state.locked.layer &&
      Number(b.dataset.head) === state.locked.head);
  }
  highlight();
}

/** Token hover: every thumbnail and the focused view keep row and column hoverPos bright. */
function highlight() {
  if (!state.run) return;
  for (const b of $("heads").children) {
    drawThumbnail(b.querySelector("canvas"), patternOf({ layer: Number(b.dataset.layer), head: Number(b.dataset.head) }),
      state.run.T, causal(), state.hoverPos);
  }
  const colors = palette();
  const attended = getComputedStyle(document.documentElement).getPropertyValue("--attended").trim();
  highlightStrip($("tokens"), patternOf(focused()), state.run.T, state.hoverPos, colors.attends, attended);
}

// ---- the focused view's tooltip

function onFocusMove(event) {
  const tip = $("tooltip");
  if (!state.run) return;
  const at = cellAt($("focus"), event);
  if (!at) {
    tip.hidden = true;
    return;
  }
  const { dest, src } = at;
  const value = patternOf(focused())[dest * state.run.T + src];
  const tok = (i) => displayToken(state.run.strTokens[i]);
  tip.textContent = `dest ${dest} ${tok(dest)} → src ${src} ${tok(src)}\n` +
    (isMasked(causal(), dest, src) ? "masked" : value.toFixed(4));
  tip.dataset.dest = dest;
  tip.dataset.src = src;
  tip.dataset.value = value;
  tip.style.left = `${event.clientX + 14}px`;
  tip.style.top = `${event.clientY + 14}px`;
  tip.hidden = false;
}

// ---- activation patching

let cancelSweep = null;

/** Runs the chosen sweep: the prompt is the clean run, #corrupted the corrupted one. */
const runPatch = () => busy(async () => {
  showError(null);
  writeUrl();
  const answer = $("answer").value;
  const wrong = $("wrong").value;
  const sweep = $("sweep").value;
  if (!answer || !wrong) {
    showError(new Error("patching needs an answer and a wrong answer (the logit difference fields)"));
    return;
  }
  const body = {
    sweep,
    clean: { prompt: $("prompt").value },
    corrupted: { prompt: $("corrupted").value },
    metric: { type: "logit_diff", answers: [parseAnswer(answer), parseAnswer(wrong)], normalize: true },
  };
  if (state.pos !== null) body.metric.position = state.pos;
  const bar = $("patch-progress");
  bar.hidden = false;
  bar.value = 0;
  $("patch-cancel").hidden = false;
  $("patch-status").textContent = "patching…";
  const sweepRun = startSweep(modelPath("patch"), body, (done, total) => {
    bar.value = total ? done / total : 0;
    $("patch-status").textContent = `${done} of ${total} patched runs`;
  });
  cancelSweep = sweepRun.cancel;
  try {
    const result = await sweepRun.result;
    const values = tensor(result.values);
    const [rows, cols] = values.shape;
    const grid = Array.from({ length: rows }, (_, r) => Array.from(values.data.subarray(r * cols, (r + 1) * cols)));
    const [, colAxis] = result.axes;
    const byHead = colAxis.name === "head";
    const colLabels = byHead ? colAxis.labels : colAxis.labels.map((t, i) => `${i} ${displayToken(t)}`);
    heatmap($("patch-map"), grid, result.axes[0].labels.map((l) => `L${l}`), colLabels,
      (r, c) => (byHead ? `L${r}H${c}` : `L${r} pos ${c}`),
      (r, c) => {
        if (byHead) {
          lockHead({ layer: r, head: c }, true);
        } else {
          $("layer").value = String(r);
          runPrompt();
        }
      }, byHead ? 34 : 22);
    bar.value = 1;
    $("patch-status").textContent = `${result.sweep}: ${result.runs} patched runs in ${result.seconds.toFixed(2)} s ` +
      `(clean ${result.clean_metric.toFixed(3)}, corrupted ${result.corrupted_metric.toFixed(3)})`;
  } catch (e) {
    showError(e);
    $("patch-status").textContent = "";
  } finally {
    $("patch-cancel").hidden = true;
    cancelSweep = null;
  }
});

// ---- start

async function start() {
  const url = readUrl();
  try {
    state.models = (await get("/v1/models")).models;
  } catch (e) {
    showError(e);
    return;
  }
  if (!state.models.length) {
    showError(new Error("the daemon serves no model"));
    return;
  }
  $("model").replaceChildren(...state.models.map((m) => new Option(m.name, m.name)));
  const preferred = url.model || (state.models.some((m) => m.name === "induction-2l") ? "induction-2l" : state.models[0].name);
  chooseModel(preferred, false);
  if (url.prompt !== null) $("prompt").value = url.prompt;
  if (url.answer !== null) $("answer").value = url.answer;
  if (url.wrong !== null) $("wrong").value = url.wrong;
  if (url.corrupted !== null) $("corrupted").value = url.corrupted;
  if (url.layer !== null && [...$("layer").options].some((o) => o.value === url.layer)) $("layer").value = url.layer;
  if (url.pos !== null) state.pos = url.pos;
  state.locked = url.locked;

  $("model").addEventListener("change", () => {
    chooseModel($("model").value, false);
    runPrompt();
  });
  $("layer").addEventListener("change", runPrompt);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      $("prompt-form").requestSubmit();
    }
  });
  $("prompt-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.pos = null;
    runPrompt();
  });
  $("logit-diff-form").addEventListener("submit", (e) => {
    e.preventDefault();
    writeUrl();
    showError(null);
    busy(() => runLogitDiff().catch(showError));
  });
  $("patch-form").addEventListener("submit", (e) => {
    e.preventDefault();
    runPatch();
  });
  $("patch-cancel").addEventListener("click", () => cancelSweep && cancelSweep());
  $("focus").addEventListener("mousemove", onFocusMove);
  $("focus").addEventListener("mouseleave", () => ($("tooltip").hidden = true));
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => state.run && (drawHeads(), drawFocused()));
  await runPrompt();
}

busy(start);
