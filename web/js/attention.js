// Attention patterns on canvases: small thumbnails (one pixel per cell,
// scaled up by CSS) and the focused head, large, with labelled axes and
// cell geometry the tooltip (and the browser tests) read back.
//
// A pattern is a Float32Array [T * T], row-major [dest][src] (TL's
// hook_pattern for one head: row = query / destination position, column =
// key / source position). Causal models mask src > dest: drawn grey.

import { displayToken } from "./tokens.js";

const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

/** The colours of the current scheme (light or dark), read from style.css. */
export function palette() {
  return {
    panel: cssVar("--panel"),
    fg: cssVar("--fg"),
    muted: cssVar("--muted"),
    masked: cssVar("--masked"),
    attends: cssVar("--attends"),
  };
}

/** Is cell (dest, src) masked for this model? */
export const isMasked = (causal, dest, src) => causal && src > dest;

/**
 * Fills a T x T block of cells at (x0, y0), cell px square.
 * focus: a token position whose row and column stay bright (others dimmed),
 * or null.
 */
function drawCells(ctx, pattern, T, x0, y0, cell, causal, colors, focus) {
  ctx.fillStyle = colors.panel;
  ctx.fillRect(x0, y0, T * cell, T * cell);
  for (let d = 0; d < T; d++) {
    for (let s = 0; s < T; s++) {
      const lit = focus === null || d === focus || s === focus;
      if (isMasked(causal, d, s)) {
        ctx.fillStyle = colors.masked;
        ctx.globalAlpha = lit ? 1 : 0.35;
      } else {
        ctx.fillStyle = `rgb(${colors.attends})`;
        ctx.globalAlpha = pattern[d * T + s] * (lit ? 1 : 0.2);
      }
      ctx.fillRect(x0 + s * cell, y0 + d * cell, cell, cell);
    }
  }
  ctx.globalAlpha = 1;
}

/** Draws a thumbnail: canvas of T x T pixels. */
export function drawThumbnail(canvas, pattern, T, causal, focus = null) {
  canvas.width = T;
  canvas.height = T;
  drawCells(canvas.getContext("2d"), pattern, T, 0, 0, 1, causal, palette(), focus);
}

const LABEL_CHARS = 10;

function label(token) {
  const shown = displayToken(token);
  return shown.length > LABEL_CHARS ? shown.slice(0, LABEL_CHARS - 1) + "…" : shown;
}

/**
 * Draws the focused head with destination tokens down the left and source
 * tokens along the top. Records its geometry on the canvas's dataset:
 * originX, originY (CSS px of cell (0, 0)'s corner), cell (px), tokens (T).
 */
export function drawFocus(canvas, pattern, strTokens, causal, focus = null) {
  const T = strTokens.length;
  const cell = Math.max(3, Math.min(28, Math.floor(400 / T)));
  const font = Math.min(12, cell - 2);
  const every = font >= 8 ? 1 : Math.ceil(9 / cell); // label every k-th token when cells are tiny
  const margin = font >= 8 ? 8 + 7 * LABEL_CHARS : 70;
  const size = margin + T * cell + 4;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = size * ratio;
  canvas.height = size * ratio;
  canvas.style.width = `${size}px`;
  canvas.style.height = `${size}px`;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  const colors = palette();
  ctx.clearRect(0, 0, size, size);
  drawCells(ctx, pattern, T, margin, margin, cell, causal, colors, focus);

  ctx.font = `${Math.max(font, 8)}px ui-monospace, "DejaVu Sans Mono", monospace`;
  ctx.fillStyle = colors.fg;
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  for (let d = 0; d < T; d += every) ctx.fillText(label(strTokens[d]), margin - 4, margin + (d + 0.5) * cell);
  ctx.save();
  ctx.translate(margin, margin - 4);
  ctx.rotate(-Math.PI / 2);
  ctx.textAlign = "left";
  for (let s = 0; s < T; s += every) ctx.fillText(label(strTokens[s]), 0, (s + 0.5) * cell);
  ctx.restore();
  ctx.fillStyle = colors.muted;
  ctx.textAlign = "left";
  ctx.fillText("dest ↓  src →", 2, 8);

  Object.assign(canvas.dataset, { originX: margin, originY: margin, cell, tokens: T });
}

/** The (dest, src) cell under a mouse event on the focused canvas, or null. */
export function cellAt(canvas, event) {
  const box = canvas.getBoundingClientRect();
  const { originX, originY, cell, tokens } = canvas.dataset;
  const src = Math.floor((event.clientX - box.left - Number(originX)) / Number(cell));
  const dest = Math.floor((event.clientY - box.top - Number(originY)) / Number(cell));
  const T = Number(tokens);
  return src >= 0 && dest >= 0 && src < T && dest < T ? { dest, src } : null;
}
