// Package objects records which provider account, and which client, own the
// objects created through keymux (files, uploads, batches, vector stores,
// assistants, threads, fine-tuning jobs, conversations; Anthropic message
// batches and files), so that a follow-up naming one is sent to a key of
// that account and refused to other clients.
//
// A Table mirrors the records in an in-process go-memdb that the request
// path reads without locks. A Backend makes them durable and fleet-wide:
// Consul KV (one entry per object under its own prefix, watched by every
// sidecar) or a local file. Stored responses, created at request rate, are
// never recorded: their ids carry the account and owner, authenticated with
// an HMAC under a fleet secret (Tag, Untag). See
// docs/design/0012-account-scoped-objects.md.
package objects
