// Canvas drawing helpers of the point editor: point markers, crosses, labels.
import { cssColour } from "./palette.js";

export const RADIUS = 6; // marker radius, px

export function marker(ctx, x, y, rgb, filled, highlighted) {
  ctx.beginPath();
  ctx.arc(x, y, highlighted ? RADIUS + 2 : RADIUS, 0, 2 * Math.PI);
  ctx.lineWidth = 2;
  if (filled) {
    ctx.fillStyle = cssColour(rgb);
    ctx.fill();
    ctx.strokeStyle = highlighted ? "#fff" : "#000";
  } else {
    ctx.strokeStyle = cssColour(rgb); // outside the source mask: hollow, no match
  }
  ctx.stroke();
}

export function cross(ctx, x, y, colour) {
  ctx.beginPath();
  ctx.moveTo(x - 2 * RADIUS, y);
  ctx.lineTo(x + 2 * RADIUS, y);
  ctx.moveTo(x, y - 2 * RADIUS);
  ctx.lineTo(x, y + 2 * RADIUS);
  ctx.strokeStyle = colour;
  ctx.lineWidth = 1;
  ctx.stroke();
}

export function label(ctx, x, y, text) {
  ctx.textAlign = "left";
  ctx.lineWidth = 3;
  ctx.strokeStyle = "#000";
  ctx.strokeText(text, x + RADIUS + 3, y);
  ctx.fillStyle = "#fff";
  ctx.fillText(text, x + RADIUS + 3, y);
}

/** Draw inside a rectangle only (points typed outside the image stay in their panel). */
export function clipTo(ctx, area, draw) {
  ctx.save();
  ctx.beginPath();
  ctx.rect(area.left, area.top, area.width, area.height);
  ctx.clip();
  draw();
  ctx.restore();
}
