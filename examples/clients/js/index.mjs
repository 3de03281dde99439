// Call keymux with the official OpenAI JavaScript client:
//   npm install && npm start            (against `keymux dev` on 127.0.0.1:10000)
//   KEYMUX_URL=http://gateway:10000/v1 KEYMUX_TOKEN=... npm start
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.KEYMUX_URL ?? "http://127.0.0.1:10000/v1",
  // Your keymux client token (client_keys mode), never an upstream key.
  apiKey: process.env.KEYMUX_TOKEN ?? "km-example-alice-not-a-real-token",
});

const resp = await client.chat.completions.create({
  model: "gpt-4",
  messages: [{ role: "user", content: "Say hello" }],
});
console.log(`${resp.choices[0].message.content} (model ${resp.model}, ${resp.usage?.total_tokens} tokens)`);

// Streaming, with the usage reported in the last chunk.
const stream = await client.chat.completions.create({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: "Say hello" }],
  stream: true,
  stream_options: { include_usage: true },
});
for await (const chunk of stream) {
  process.stdout.write(chunk.choices[0]?.delta?.content ?? "");
  if (chunk.usage) console.log(`\n(${chunk.usage.total_tokens} tokens)`);
}
