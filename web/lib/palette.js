// Colours shared with the Python pictures (ditf_core/matching/draw.py), so the node's preview IMAGE and the
// point editor agree: point i gets the same colour in both, and heatmaps use the same blue-to-red ramp.

/** [r, g, b] (0-255) of point i: golden-ratio hues, HSV s = 0.85, v = 1.0 (draw.point_colours). */
export function pointColour(i) {
  const h = (0.1 + i * 0.618034) % 1.0;
  const s = 0.85;
  const v = 1.0;
  const sector = Math.floor(h * 6.0);
  const f = h * 6.0 - sector;
  const p = v * (1 - s);
  const q = v * (1 - s * f);
  const t = v * (1 - s * (1 - f));
  const rgb = [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][sector % 6];
  return rgb.map((c) => Math.trunc(c * 255)); // Python's int(c * 255)
}

export function cssColour(rgb, alpha = 1) {
  return `rgba(${rgb[0]}, ${rgb[1]}, ${rgb[2]}, ${alpha})`;
}

/** [r, g, b] (0-255) of heat in [0, 1]: red = heat, green peaks at 0.5, blue = 1 - heat (draw.heatmap_overlay). */
export function heatColour(heat) {
  return [heat, 1 - Math.abs(2 * heat - 1), 1 - heat].map((c) => Math.trunc(c * 255));
}
