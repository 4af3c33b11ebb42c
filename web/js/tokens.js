// Tokens as the dashboard shows them: whitespace made visible, and the
// token strip with positions, selection and attention highlights.

/** A token string with its whitespace visible: space ␣, newline ↵, tab ⇥. */
export function displayToken(token) {
  return token.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥");
}

/**
 * Renders strTokens into container as one element per token, each with its
 * position. Calls onHover(position | null) and onSelect(position).
 */
export function renderStrip(container, strTokens, selected, { onHover, onSelect }) {
  container.replaceChildren();
  strTokens.forEach((token, pos) => {
    const el = document.createElement("span");
    el.className = "token" + (pos === selected ? " selected" : "");
    el.dataset.pos = pos;
    el.title = `position ${pos}: ${JSON.stringify(token)}`;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = displayToken(token);
    const index = document.createElement("span");
    index.className = "pos";
    index.textContent = pos;
    el.append(text, index);
    el.addEventListener("mouseenter", () => onHover(pos));
    el.addEventListener("mouseleave", () => onHover(null));
    el.addEventListener("click", () => onSelect(pos));
    container.append(el);
  });
}

/**
 * Tints the strip for hovered position i of a head's pattern [T * T]:
 * the top half of token j by how much i attends to j (pattern[i][j]), the
 * bottom half by how much j attends to i (pattern[j][i]). i null clears.
 */
export function highlightStrip(container, pattern, T, i, attends, attended) {
  for (const el of container.children) {
    const j = Number(el.dataset.pos);
    el.classList.toggle("hovered", j === i);
    if (i === null || !pattern) {
      el.style.background = "";
      continue;
    }
    const from = pattern[i * T + j] || 0;
    const to = pattern[j * T + i] || 0;
    el.style.background = `linear-gradient(rgba(${attends}, ${from}) 50%, rgba(${attended}, ${to}) 50%)`;
  }
}
