// Package mockupstream is an OpenAI-compatible upstream that answers like the
// real APIs (status codes, error JSON, headers, SSE framing) without a
// network or a real key.
//
// # Who uses it
//
//   - `keymux dev` with no source flag (cmd/keymux/app): it starts one mock
//     on a loopback port and writes DemoConfig(URL) for the offline demo.
//     This is why the keymux binary links the package; nothing else in the
//     binary depends on it, and `keymux serve` never starts it.
//   - The standalone command cmd/mockupstream (docker compose's
//     mockupstream service, manual tests), which may also set a credential
//     allow-list (Options.Keys) and serve TLS (StartTLS).
//   - Tests: e2e (through the Envoy emulator), health (probe verdicts), the
//     examples checks, and this package's own tests.
//
// # Endpoints
//
// Matched under any path prefix (/v1/..., /api/v1/..., Azure's
// /openai/deployments/{deployment}/...?api-version=...):
//
//	POST .../chat/completions   OpenAI chat completion, JSON or SSE (stream: true)
//	POST .../embeddings         deterministic float vectors
//	GET  .../models             the model list
//	POST .../messages           Anthropic's native Messages API (x-api-key, anthropic-version)
//	POST .../messages/count_tokens            Anthropic's token count ({"input_tokens": n})
//	GET|POST|DELETE .../messages/batches[/{id}[/results|/cancel]]
//	                            Anthropic's Message Batches: a batch ends at once, belongs to the
//	                            credential that created it (another gets 404, as another account)
//	GET  .../realtime?model=…   OpenAI's Realtime API over WebSocket (Azure: /openai/realtime?
//	                            deployment=…): session.created, then one server event per client
//	                            event (session.updated, conversation.item.created,
//	                            response.created + response.done, else error)
//
// Answers are deterministic: the reply to a chat request is Reply(model,
// messages) and its usage is PromptTokens / CompletionTokens, so tests can
// compute the expected values.
//
// # Test-only behaviours
//
// The demo and the standalone command use only the normal answers above. The
// rest of the API exists for tests, and neither of them calls it:
//
//   - Script (a FIFO of one-shot behaviours per credential) and SetDefault
//     (a sticky one) take a Behaviour: an error status with the provider's
//     error body and headers (Status, ErrorCode, RetryAfter, Headers), a
//     delayed answer (Delay), a stream cut after N SSE events
//     (CutStreamAfter), a connection closed before any answer (Reset),
//     paced SSE events (ChunkDelay), replaced content or a
//     raw body (Content, Body), limited to one endpoint (Path).
//   - Requests, WaitRequests and Reset read and clear the record of every
//     request received (credential, path, model, headers, body), so a test
//     can assert which key, path and model reached the upstream.
//   - Options.StrictModels (404 for unknown models) and Options.Now (a fake
//     clock for "created" fields and rate-limit resets).
package mockupstream
