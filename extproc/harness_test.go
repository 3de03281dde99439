package extproc

// The harness of the package's tests: a scripted ext_proc stream, builders
// for the messages Envoy sends, a store built from an in-memory config, a
// recording Observer and readers for keymux's replies. Tests drive
// Server.Process through it as Envoy would, without gRPC.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/telemetry"
	"github.com/keymux/keymux/testutil/fakeclock"
)

// t0 is the fake clock's start: 20 seconds into a minute.
var t0 = time.Date(2026, 3, 4, 5, 6, 20, 0, time.UTC)

// ---------------------------------------------------------------- stream

// fakeStream is a scripted ExternalProcessor_ProcessServer. Recv hands out
// in one message per call, then recvErr (io.EOF, Envoy's half-close, when
// nil). Send records every reply; the sendErrAt-th call (1-based) fails
// with sendErr instead. After cancelAt replies the stream's context is
// cancelled, as when Envoy resets the stream. As Envoy does, the stream
// sends nothing more after an ImmediateResponse: the rest of in is dropped.
// upstream, when set, plays the upstream: it sees every reply and returns
// the messages that follow it (e.g. the response of the key just chosen).
type fakeStream struct {
	grpc.ServerStream // nil: Process uses only Context, Recv and Send

	in        []*extprocv3.ProcessingRequest
	upstream  func(*extprocv3.ProcessingResponse) []*extprocv3.ProcessingRequest
	recvErr   error
	sendErr   error
	sendErrAt int
	cancelAt  int

	ctx    context.Context
	cancel context.CancelFunc
	recvs  int // Recv calls
	out    []*extprocv3.ProcessingResponse
}

func newStream(t testing.TB, msgs ...*extprocv3.ProcessingRequest) *fakeStream {
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	return &fakeStream{in: msgs, ctx: ctx, cancel: cancel}
}

func (f *fakeStream) Context() context.Context { return f.ctx }

func (f *fakeStream) Recv() (*extprocv3.ProcessingRequest, error) {
	f.recvs++
	if len(f.in) > 0 {
		m := f.in[0]
		f.in = f.in[1:]
		return m, nil
	}
	if f.recvErr != nil {
		return nil, f.recvErr
	}
	return nil, io.EOF
}

func (f *fakeStream) Send(r *extprocv3.ProcessingResponse) error {
	if f.sendErrAt > 0 && len(f.out)+1 == f.sendErrAt {
		f.sendErrAt = 0
		return f.sendErr
	}
	// gRPC serializes a reply within Send: keep a copy, as Envoy would
	// (the exchange reuses its reply storage once the stream ended).
	r = proto.Clone(r).(*extprocv3.ProcessingResponse)
	f.out = append(f.out, r)
	if r.GetImmediateResponse() != nil {
		f.in = nil
	} else if f.upstream != nil {
		f.in = append(f.in, f.upstream(r)...)
	}
	if f.cancelAt > 0 && len(f.out) == f.cancelAt {
		f.cancel()
	}
	return nil
}

// ---------------------------------------------------------------- messages

// hv is one header as Envoy sends it: the value in raw_value.
func hv(k, v string) *corev3.HeaderValue { return &corev3.HeaderValue{Key: k, RawValue: []byte(v)} }

// headerMap builds an Envoy header map from name, value pairs; names are
// lower-cased as Envoy does.
func headerMap(kv ...string) *corev3.HeaderMap {
	if len(kv)%2 != 0 {
		panic("headerMap: odd number of arguments")
	}
	m := &corev3.HeaderMap{}
	for i := 0; i < len(kv); i += 2 {
		m.Headers = append(m.Headers, hv(strings.ToLower(kv[i]), kv[i+1]))
	}
	return m
}

func reqHeaders(eos bool, kv ...string) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: headerMap(kv...), EndOfStream: eos}}}
}

func reqBody(body string, eos bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{
		RequestBody: &extprocv3.HttpBody{Body: []byte(body), EndOfStream: eos}}}
}

func respHeaders(eos bool, kv ...string) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: headerMap(kv...), EndOfStream: eos}}}
}

func respBody(body string, eos bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
		ResponseBody: &extprocv3.HttpBody{Body: []byte(body), EndOfStream: eos}}}
}

func reqTrailers() *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{
		RequestTrailers: &extprocv3.HttpTrailers{Trailers: headerMap("x-checksum", "abc")}}}
}

func respTrailers() *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{
		ResponseTrailers: &extprocv3.HttpTrailers{Trailers: headerMap("grpc-status", "0")}}}
}

// request is what Envoy sends for a client request: the headers message
// (pseudo-headers first, content-length when there is a body, then kv) and,
// for a non-empty body, one buffered body message.
func request(method, path, body string, kv ...string) []*extprocv3.ProcessingRequest {
	h := []string{":method", method, ":path", path, ":authority", "gw.local", ":scheme", "http", "x-request-id", "req-1"}
	if body != "" {
		h = append(h, "content-type", "application/json", "content-length", strconv.Itoa(len(body)))
	}
	h = append(h, kv...)
	if body == "" {
		return []*extprocv3.ProcessingRequest{reqHeaders(true, h...)}
	}
	return []*extprocv3.ProcessingRequest{reqHeaders(false, h...), reqBody(body, true)}
}

// chat is a POST /v1/chat/completions for model with the client's headers.
func chat(model string, kv ...string) []*extprocv3.ProcessingRequest {
	return request("POST", "/v1/chat/completions", `{"model":"`+model+`","messages":[{"role":"user","content":"hi"}]}`, kv...)
}

// bearer is the authorization header pair for token.
func bearer(token string) []string { return []string{"authorization", "Bearer " + token} }

// then concatenates message lists.
func then(lists ...[]*extprocv3.ProcessingRequest) []*extprocv3.ProcessingRequest {
	var out []*extprocv3.ProcessingRequest
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}

// ---------------------------------------------------------------- store

// newTestStore builds a ready store from a YAML config, failing on any
// refused document.
func newTestStore(t testing.TB, cfg string) *store.Store {
	t.Helper()
	c, refused, err := store.ParseFile([]byte(cfg), store.ResolveSecretRef)
	if err != nil || len(refused) > 0 {
		t.Fatalf("config: %v %v", err, refused)
	}
	st, err := store.New(store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Apply(c, store.SourceInfo{Source: "test"}); err != nil {
		t.Fatal(err)
	}
	return st
}

// tokenSHA returns the hex SHA-256 of a client token, as client documents hold it.
func tokenSHA(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// Client tokens of testKeys.
const (
	tokenAll     = "km-test-all"
	tokenLimited = "km-test-limited"
	tokenOff     = "km-test-off"
)

// testKeys is a pool with one key per provider (each serving its own
// models, so that the model picks the provider), a rule and three clients:
// one allowed everything, one limited in models and rate, one disabled.
// settings are prepended as they are given.
func testKeys(settings string) string {
	return settings + `
keys:
  oai: {provider: openai, secret: sk-test-oai, models: [gpt-4o, gpt-4o-mini]}
  az:
    provider: azure
    base_url: "https://az.example.com"
    secret: sk-test-az
    models: [az-4o, az-plain]
    azure: {api_version: "2024-10-21", deployments: {az-4o: prod-4o}}
  ant: {provider: anthropic, secret: sk-test-ant, models: [claude-sonnet]}
  hf: {provider: huggingface, secret: hf-test-hf, models: [llama-3]}
  compat: {provider: openai_compatible, base_url: "http://vllm.local:8000/v1", secret: sk-test-compat, models: [qwen]}
rules:
  up: {key: oai, from: gpt-4, to: gpt-4o}
clients:
  all: {token_sha256: "` + tokenSHA(tokenAll) + `"}
  limited: {token_sha256: "` + tokenSHA(tokenLimited) + `", models: [gpt-4o, qwen], limits: {rpm: 2, tpm: 100}}
  off: {token_sha256: "` + tokenSHA(tokenOff) + `", enabled: false}
`
}

// ---------------------------------------------------------------- observer

// recorder is a telemetry.Observer that keeps a copy of every Call it is
// handed; Begin returns traceparent.
type recorder struct {
	traceparent string

	mu     sync.Mutex
	begins []telemetry.Call
	ends   []telemetry.Call
}

func (r *recorder) Begin(c *telemetry.Call) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.begins = append(r.begins, *c)
	return r.traceparent
}

func (r *recorder) End(c *telemetry.Call) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ends = append(r.ends, *c)
}

// ---------------------------------------------------------------- rig

// rig is a Server over a test store, with a fake clock and a recorder.
type rig struct {
	t     *testing.T
	srv   *Server
	store *store.Store
	clock *fakeclock.Clock
	obs   *recorder
}

func newRig(t *testing.T, cfg string) *rig {
	t.Helper()
	r := &rig{t: t, store: newTestStore(t, cfg), clock: fakeclock.New(t0), obs: &recorder{}}
	// The body path: calls are booked when their Process stream ends, usage
	// read from the chunks (no access-log stream).
	srv, err := New(Config{Store: r.store, Observer: r.obs, Now: r.clock.Now, UsageFromBody: true})
	if err != nil {
		t.Fatal(err)
	}
	r.srv = srv
	return r
}

// exchangeResult is what one stream produced: the replies and the Call the
// Observer got at its end.
type exchangeResult struct {
	replies []*extprocv3.ProcessingResponse
	call    telemetry.Call
}

// run serves msgs as one stream that ends with a half-close (or after an
// ImmediateResponse). It fails the test when Process returns an error, when
// a message got no reply or when the Observer did not get exactly one End.
func (r *rig) run(msgs ...*extprocv3.ProcessingRequest) exchangeResult {
	r.t.Helper()
	return r.runStream(newStream(r.t, msgs...))
}

// runStream is run over a prepared stream.
func (r *rig) runStream(st *fakeStream) exchangeResult {
	r.t.Helper()
	n := len(r.obs.ends)
	if err := r.srv.Process(st); err != nil {
		r.t.Fatalf("Process: %v", err)
	}
	if len(st.out) != st.recvs-1 {
		r.t.Fatalf("%d replies to %d messages", len(st.out), st.recvs-1)
	}
	if got := len(r.obs.ends) - n; got != 1 {
		r.t.Fatalf("Observer.End called %d times, want once", got)
	}
	return exchangeResult{replies: st.out, call: r.obs.ends[len(r.obs.ends)-1]}
}

// answerAs returns a fakeStream.upstream that answers a forwarded request
// with the messages answer gives for the chosen key.
func answerAs(answer func(key string) []*extprocv3.ProcessingRequest) func(*extprocv3.ProcessingResponse) []*extprocv3.ProcessingRequest {
	return func(resp *extprocv3.ProcessingResponse) []*extprocv3.ProcessingRequest {
		cr := resp.GetRequestBody().GetResponse()
		if cr == nil {
			cr = resp.GetRequestHeaders().GetResponse()
		}
		if !cr.GetClearRouteCache() {
			return nil // not a forwarding reply
		}
		key := resp.GetDynamicMetadata().GetFields()[MetadataNamespace].GetStructValue().GetFields()["key_id"].GetStringValue()
		return answer(key)
	}
}

// entry returns the runtime entry of key id.
func (r *rig) entry(id string) *store.Entry {
	r.t.Helper()
	e := r.store.Read().Key(id)
	if e == nil {
		r.t.Fatalf("no key %s", id)
	}
	return e
}

// ---------------------------------------------------------------- replies

// localReply is an ImmediateResponse: status, headers and the OpenAI-style
// error of its body (when it is one).
type localReply struct {
	status  int
	headers map[string]string
	body    []byte
	err     struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	}
}

func (l localReply) code() string {
	if l.err.Code == nil {
		return ""
	}
	return *l.err.Code
}

func (l localReply) param() string {
	if l.err.Param == nil {
		return ""
	}
	return *l.err.Param
}

// immediate reads resp as an ImmediateResponse, failing the test otherwise.
func immediate(t testing.TB, resp *extprocv3.ProcessingResponse) localReply {
	t.Helper()
	ir := resp.GetImmediateResponse()
	if ir == nil {
		t.Fatalf("reply is not an ImmediateResponse: %v", resp)
	}
	l := localReply{status: int(ir.GetStatus().GetCode()), headers: map[string]string{}, body: ir.GetBody()}
	for _, h := range ir.GetHeaders().GetSetHeaders() {
		l.headers[h.GetHeader().GetKey()] = string(h.GetHeader().GetRawValue())
	}
	if l.status >= 400 {
		var doc struct {
			Error json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal(l.body, &doc); err != nil || json.Unmarshal(doc.Error, &l.err) != nil {
			t.Fatalf("error body is not OpenAI error JSON: %s", l.body)
		}
	}
	return l
}

// forwarded is a request-path reply that lets the request go upstream.
type forwarded struct {
	set        map[string]string // header mutation (last value wins)
	removed    []string
	body       []byte // body mutation, nil when none
	clearRoute bool
	metadata   map[string]string // keymux's dynamic metadata
	// The headers for Envoy's retries, taken out of set: the call id the
	// upstream filter joins on and x-envoy-max-retries ("" when not set).
	call, maxRetries string
}

// forwardOf reads a request headers or body reply, failing the test on an
// ImmediateResponse or another kind.
func forwardOf(t testing.TB, resp *extprocv3.ProcessingResponse) forwarded {
	t.Helper()
	var cr *extprocv3.CommonResponse
	switch r := resp.GetResponse().(type) {
	case *extprocv3.ProcessingResponse_RequestHeaders:
		cr = r.RequestHeaders.GetResponse()
	case *extprocv3.ProcessingResponse_RequestBody:
		cr = r.RequestBody.GetResponse()
	default:
		t.Fatalf("reply is not a request headers/body reply: %v", resp)
	}
	f := forwarded{set: map[string]string{}, metadata: map[string]string{}}
	for _, h := range cr.GetHeaderMutation().GetSetHeaders() {
		if h.GetHeader().GetValue() != "" {
			t.Errorf("header %s set in value, want raw_value", h.GetHeader().GetKey())
		}
		f.set[h.GetHeader().GetKey()] = string(h.GetHeader().GetRawValue())
	}
	f.call, f.maxRetries = f.set[HeaderCall], f.set[hdrMaxRetries]
	delete(f.set, HeaderCall)
	delete(f.set, hdrMaxRetries)
	f.removed = cr.GetHeaderMutation().GetRemoveHeaders()
	f.body = cr.GetBodyMutation().GetBody()
	f.clearRoute = cr.GetClearRouteCache()
	for k, v := range resp.GetDynamicMetadata().GetFields()[MetadataNamespace].GetStructValue().GetFields() {
		f.metadata[k] = v.GetStringValue()
	}
	return f
}
