// Package examples holds keymux's sample material, checked by its tests:
// keymux.yaml (a file-source configuration covering every provider),
// consul-seed/ (the same kind of configuration as Consul KV entries),
// clients/ (curl, Go and JavaScript callers) and mockupstream (an
// OpenAI-compatible upstream for tests and `keymux dev`).
package examples
