// Multipart endpoints through keymux with the official OpenAI JavaScript client: an audio
// transcription and an image edit. Prints one JSON line per call with the SHA-256 of the file
// sent, so a test can check that the upstream got the file intact.
//   KEYMUX_URL=http://127.0.0.1:10000/v1 KEYMUX_TOKEN=... node forms.mjs
import OpenAI, { toFile } from "openai";
import { createHash } from "node:crypto";

const client = new OpenAI({
  baseURL: process.env.KEYMUX_URL ?? "http://127.0.0.1:10000/v1",
  apiKey: process.env.KEYMUX_TOKEN ?? "km-example-alice-not-a-real-token",
  maxRetries: 0,
});

// Deterministic bytes that hold CR, LF and dashes, as binary audio and images do.
function bytes(n, seed) {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}
const sha256 = (b) => createHash("sha256").update(b).digest("hex");

const audio = bytes(3 * 1024 * 1024, 7);
const tr = await client.audio.transcriptions.create({
  file: await toFile(audio, "speech.wav", { type: "audio/wav" }),
  model: "whisper-1",
});
console.log(JSON.stringify({ op: "transcription", text: tr.text, sha256: sha256(audio) }));

const image = bytes(256 * 1024, 11);
const edit = await client.images.edit({
  image: await toFile(image, "in.png", { type: "image/png" }),
  prompt: "add a hat",
  model: "dall-e-2",
});
console.log(JSON.stringify({ op: "image_edit", created: edit.created, images: edit.data.length, sha256: sha256(image) }));
