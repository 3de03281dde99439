// Package mockupstream is an OpenAI-compatible upstream for tests and for
// `keymux dev`: it answers like the real APIs (status codes, error JSON,
// headers, SSE framing) and records every request it receives, so a test can
// assert which credential, path and model reached the upstream.
//
// Endpoints, matched under any path prefix (/v1/..., /api/v1/..., Azure's
// /openai/deployments/{deployment}/...?api-version=...):
//
//	POST .../chat/completions   OpenAI chat completion, JSON or SSE (stream: true)
//	POST .../embeddings         deterministic float vectors
//	GET  .../models             the model list
//	POST .../messages           Anthropic's native Messages API (x-api-key, anthropic-version)
//
// Answers are deterministic: the reply to a chat request is Reply(model,
// messages) and its usage is PromptTokens / CompletionTokens, so tests can
// compute the expected values.
//
// A test steers the answers per credential with Script (a FIFO of one-shot
// behaviours) and SetDefault (a sticky behaviour): an error status with the
// provider's error body and headers, a delay, a stream cut after N events.
package mockupstream
