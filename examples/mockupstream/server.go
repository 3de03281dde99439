package mockupstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tidwall/gjson"

	"github.com/keymux/keymux/internal/backoff"
)

// DefaultModels are the models GET .../models lists when Options.Models is empty.
var DefaultModels = []string{
	"gpt-4", "gpt-4o", "gpt-4o-mini", "gpt-3.5-turbo",
	"text-embedding-3-small", "text-embedding-3-large",
	"claude-3-5-haiku-latest", "claude-sonnet-4-0",
}

// DefaultEmbeddingDims is the length of the vectors the mock answers when
// neither Options.EmbeddingDims nor the request's "dimensions" says otherwise.
const DefaultEmbeddingDims = 8

// maxBodyBytes bounds what the mock reads of a request body.
const maxBodyBytes = 32 << 20

// ErrStarted is returned by Start and StartTLS on a server already started.
var ErrStarted = errors.New("mockupstream: server already started")

// Options configures a Server. The zero value is usable.
type Options struct {
	// Logger receives one debug line per request (never a credential);
	// nil discards.
	Logger *slog.Logger
	// Keys, when not empty, is the allow-list of credentials: any other
	// credential gets 401 invalid_api_key. Empty accepts any non-empty one.
	Keys []string
	// Models are listed by GET .../models; empty = DefaultModels.
	Models []string
	// StrictModels answers 404 model_not_found for a model not in Models
	// (or DefaultModels); Azure deployments are never checked.
	StrictModels bool
	// EmbeddingDims is the default vector length; 0 = DefaultEmbeddingDims.
	EmbeddingDims int
	// Now is the clock for "created" fields and rate-limit resets; nil = time.Now.
	Now func() time.Time
	// Accounts maps a credential to its provider account: files, batches
	// and stored responses are visible only to credentials of the account
	// that created them. A credential not listed is an account of its own.
	Accounts map[string]string
}

// Recorded is one request the mock received. Body and Header are shared with
// the mock's own record: do not modify them.
type Recorded struct {
	Seq      int    // 1-based arrival order
	Method   string // "POST"
	Path     string // URL path as received, e.g. "/v1/chat/completions"
	RawQuery string // e.g. "api-version=2024-10-21"
	Host     string // the Host header (:authority)
	// Credential is the key the request carried: the token of
	// "authorization: Bearer", or the value of "api-key" or "x-api-key".
	Credential string
	AuthHeader string // the header the credential came from: "authorization", "api-key", "x-api-key" ("" = none)
	AuthValue  string // that header's raw value, e.g. "Bearer sk-test-k1"
	// Model is the model the upstream serves: the Azure deployment on a
	// deployment path, else the body's "model" (when a string).
	Model      string
	BodyModel  string // the body's "model" as sent (when a string)
	Deployment string // the Azure deployment, from the path
	Stream     bool   // the body's "stream" is true
	Body       []byte
	// ContentLength is the request's Content-Length (-1 = none, chunked);
	// when set, the mock read exactly that many bytes into Body.
	ContentLength int64
	Header        http.Header
	Time          time.Time
	// Status is the status the mock answered (0 when the client went away
	// before an answer); Cut reports that the mock cut the connection on
	// purpose (Behaviour.CutStreamAfter).
	Status int
	Cut    bool
	// Form is what a multipart endpoint's body held (file parts as size
	// and hash only; Body stays empty); nil for other requests.
	Form *Form
}

// Server is the mock upstream. It is an http.Handler, so it can also be
// mounted in an httptest.Server; Start and StartTLS run its own listener.
// All methods are safe for concurrent use.
type Server struct {
	log    *slog.Logger
	opts   Options
	models []string
	dims   int
	now    func() time.Time

	mu       sync.Mutex
	reqs     []Recorded
	changed  chan struct{} // closed and replaced on every new or updated record
	scripts  map[string][]Behaviour
	defaults map[string]Behaviour
	counts   map[[2]string]int // requests per credential and model, for x-ratelimit-remaining-*
	epoch    uint64            // bumped by Reset, so late answers never touch new records
	objs     objectStore       // files, batches, stored responses (its own lock)
	// Anthropic message batches, by id and in creation order.
	batchByID map[string]*messageBatch
	batchList []*messageBatch

	ctx    context.Context // ends when Close is called; ends Delays
	cancel context.CancelFunc
	srv    *http.Server
	ln     net.Listener
	url    string
	pool   *x509.CertPool
	done   chan struct{}
	serr   error
}

// New returns a Server that is not listening yet.
func New(opts Options) *Server {
	s := &Server{
		log:      opts.Logger,
		opts:     opts,
		models:   opts.Models,
		dims:     opts.EmbeddingDims,
		now:      opts.Now,
		changed:  make(chan struct{}),
		scripts:  make(map[string][]Behaviour),
		defaults: make(map[string]Behaviour),
		counts:   make(map[[2]string]int),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if len(s.models) == 0 {
		s.models = DefaultModels
	}
	if s.dims <= 0 {
		s.dims = DefaultEmbeddingDims
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// Start listens on addr ("127.0.0.1:0" in tests) with plain HTTP/1.1 and
// HTTP/2 with prior knowledge (h2c), and serves until Close. It is
// listening when it returns.
func (s *Server) Start(addr string) error { return s.start(addr, false) }

// StartTLS is Start with TLS (HTTP/1.1 and HTTP/2 by ALPN) and a fresh
// self-signed certificate for 127.0.0.1, ::1 and localhost; clients trust
// it through CertPool or ClientTLSConfig.
func (s *Server) StartTLS(addr string) error { return s.start(addr, true) }

func (s *Server) start(addr string, useTLS bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return ErrStarted
	}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	var tlsCfg *tls.Config
	scheme := "http"
	if useTLS {
		cert, pool, err := selfSigned(s.now())
		if err != nil {
			return fmt.Errorf("mockupstream: certificate: %w", err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		protocols.SetHTTP2(true)
		s.pool = pool
		scheme = "https"
	} else {
		protocols.SetUnencryptedHTTP2(true)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("mockupstream: listen: %w", err)
	}
	if tlsCfg != nil {
		tlsCfg.NextProtos = []string{"h2", "http/1.1"}
		ln = tls.NewListener(ln, tlsCfg)
	}
	s.ln = ln
	s.url = scheme + "://" + ln.Addr().String()
	s.srv = &http.Server{
		Handler:           s,
		Protocols:         &protocols,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return s.ctx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.done = make(chan struct{})
	go func(srv *http.Server, done chan struct{}) {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.mu.Lock()
			s.serr = err
			s.mu.Unlock()
		}
	}(s.srv, s.done)
	return nil
}

// URL is "http://127.0.0.1:PORT" (or https after StartTLS); "" before Start.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.url
}

// Addr is "127.0.0.1:PORT"; "" before Start.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// CertPool holds the certificate StartTLS serves; nil otherwise.
func (s *Server) CertPool() *x509.CertPool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pool
}

// ClientTLSConfig trusts the certificate StartTLS serves; nil otherwise.
func (s *Server) ClientTLSConfig() *tls.Config {
	pool := s.CertPool()
	if pool == nil {
		return nil
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

// Close stops the server: it ends pending Delays and closes every
// connection. It is safe to call more than once and before Start.
func (s *Server) Close() error {
	s.cancel()
	s.mu.Lock()
	srv, done := s.srv, s.done
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	err := srv.Close()
	<-done
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		err = s.serr
	}
	return err
}

// Requests returns every request received so far, in arrival order.
func (s *Server) Requests() []Recorded {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.reqs)
}

// WaitRequests blocks until at least n requests have been received, then
// returns them all; it fails when ctx ends first.
func (s *Server) WaitRequests(ctx context.Context, n int) ([]Recorded, error) {
	for {
		s.mu.Lock()
		if len(s.reqs) >= n {
			out := slices.Clone(s.reqs)
			s.mu.Unlock()
			return out, nil
		}
		ch := s.changed
		have := len(s.reqs)
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("mockupstream: %d of %d requests received: %w", have, n, ctx.Err())
		}
	}
}

// Reset forgets the recorded requests, the scripts, the defaults, the
// per-credential counters and the message batches.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs = nil
	s.epoch++
	clear(s.scripts)
	clear(s.defaults)
	clear(s.counts)
	s.batchByID, s.batchList = nil, nil
	s.notifyLocked()
}

// Script queues one-shot behaviours for credential, used in order by its
// next requests; after them the credential's default applies. credential
// "" queues for requests of any credential, used after that credential's own
// script.
func (s *Server) Script(credential string, behaviours ...Behaviour) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scripts[credential] = append(s.scripts[credential], behaviours...)
}

// SetDefault makes b the sticky behaviour of credential ("" = of every
// credential without a default of its own). SetDefault(c, Behaviour{})
// restores normal answers.
func (s *Server) SetDefault(credential string, b Behaviour) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.defaults[credential] = b
}

// next picks the behaviour for a request of credential to path for model
// and counts it (per credential and model: providers limit each model
// apart).
func (s *Server) next(credential, path, model string) (Behaviour, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counts[[2]string{credential, model}]++
	n := s.counts[[2]string{credential, model}]
	for _, c := range []string{credential, ""} {
		if q := s.scripts[c]; len(q) > 0 && q[0].appliesTo(path, model) {
			b := q[0]
			s.scripts[c] = q[1:]
			return b, n
		}
	}
	b, ok := s.defaults[credential]
	if !ok {
		b = s.defaults[""]
	}
	if !b.appliesTo(path, model) {
		return Behaviour{}, n
	}
	return b, n
}

func (s *Server) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Server) record(r Recorded) (seq int, epoch uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r.Seq = len(s.reqs) + 1
	s.reqs = append(s.reqs, r)
	s.notifyLocked()
	return r.Seq, s.epoch
}

func (s *Server) finish(epoch uint64, seq, status int, cut bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if epoch != s.epoch {
		return // Reset in between
	}
	i := seq - 1
	s.reqs[i].Status = status
	s.reqs[i].Cut = cut
	s.notifyLocked()
}

// route is what the path asks for.
type route struct {
	op         string // "chat", "embeddings", "models", "messages", "" = unknown
	dialect    dialect
	deployment string
}

func parseRoute(path string) route {
	if i := strings.Index(path, "/openai/deployments/"); i >= 0 {
		rest := path[i+len("/openai/deployments/"):]
		dep, op, ok := strings.Cut(rest, "/")
		if !ok || dep == "" {
			return route{dialect: dialectAzure}
		}
		rt := route{dialect: dialectAzure, deployment: dep}
		switch op {
		case "chat/completions":
			rt.op = "chat"
		case "embeddings":
			rt.op = "embeddings"
		}
		return rt
	}
	if op := objectOp(path); op != "" {
		return route{op: op}
	}
	switch {
	case strings.HasSuffix(path, "/realtime"):
		if strings.Contains(path, "/openai/") {
			return route{op: "realtime", dialect: dialectAzure}
		}
		return route{op: "realtime"}
	case strings.HasSuffix(path, "/messages/count_tokens"):
		return route{op: "count_tokens", dialect: dialectAnthropic}
	case strings.Contains(path, "/messages/batches"):
		return route{op: "batches", dialect: dialectAnthropic}
	case strings.HasSuffix(path, "/chat/completions"):
		return route{op: "chat"}
	case strings.HasSuffix(path, "/embeddings"):
		return route{op: "embeddings"}
	case strings.HasSuffix(path, "/models"):
		if strings.Contains(path, "/openai/") {
			return route{op: "models", dialect: dialectAzure}
		}
		return route{op: "models"}
	case strings.HasSuffix(path, "/messages"):
		return route{op: "messages", dialect: dialectAnthropic}
	}
	if op := formRoute(path); op != "" {
		return route{op: op}
	}
	return route{}
}

// credentialOf finds the credential, in the order the route's provider
// uses: x-api-key first for Anthropic, api-key first for Azure,
// authorization first otherwise.
func credentialOf(h http.Header, d dialect) (cred, name, value string) {
	order := []string{"authorization", "api-key", "x-api-key"}
	switch d {
	case dialectAzure:
		order = []string{"api-key", "authorization", "x-api-key"}
	case dialectAnthropic:
		order = []string{"x-api-key", "authorization", "api-key"}
	}
	for _, n := range order {
		v := h.Get(n)
		if v == "" {
			continue
		}
		if n != "authorization" {
			return strings.TrimSpace(v), n, v
		}
		scheme, tok, ok := strings.Cut(v, " ")
		if ok && strings.EqualFold(scheme, "bearer") {
			return strings.TrimSpace(tok), n, v
		}
		return "", n, v
	}
	return "", "", ""
}

// statusWriter records the status and a cut in the request's record before
// the client can see them, so a test never reads a stale record.
type statusWriter struct {
	http.ResponseWriter
	s      *Server
	epoch  uint64
	seq    int
	status int
	cut    bool
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
		w.s.finish(w.epoch, w.seq, code, false)
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

// abort closes the connection without finishing the answer (no [DONE], no
// chunked terminator); cut says the mock meant it (CutStreamAfter).
func (w *statusWriter) abort(cut bool) {
	if cut {
		w.cut = true
		w.s.finish(w.epoch, w.seq, w.status, true)
	}
	panic(http.ErrAbortHandler)
}

// reset closes the connection before any answer (Behaviour.Reset): the
// HTTP/1.1 connection is taken over and closed; elsewhere (HTTP/2) the
// handler aborts, which resets the stream.
func (w *statusWriter) reset() {
	w.cut = true
	w.s.finish(w.epoch, w.seq, 0, true)
	if conn, _, err := http.NewResponseController(w.ResponseWriter).Hijack(); err == nil {
		_ = conn.Close()
	}
	panic(http.ErrAbortHandler)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// request is a parsed incoming request.
type request struct {
	r      *http.Request
	rt     route
	body   []byte
	model  string
	stream bool
	form   *Form // multipart endpoints
	seq    int
	count  int // requests of this credential for this model so far, this one included
	b      Behaviour
}

// ServeHTTP answers one request like the provider its path belongs to.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt := parseRoute(r.URL.Path)
	var (
		body    []byte
		form    *Form
		readErr error
	)
	switch {
	case formOps[rt.op] && r.Method == http.MethodPost:
		// Streamed: file parts are hashed, never held.
		form, readErr = readForm(r)
	case formOps[rt.op] && rt.op != "files": // GET /v1/files/… is objects.go's
		rt.op = "" // GET on a form endpoint: not modelled (404)
		fallthrough
	default:
		body, readErr = io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	}
	cred, authName, authValue := credentialOf(r.Header, rt.dialect)
	rec := Recorded{
		Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery, Host: r.Host,
		Credential: cred, AuthHeader: authName, AuthValue: authValue,
		Deployment: rt.deployment, Body: body, ContentLength: r.ContentLength, Header: r.Header.Clone(), Time: s.now(),
		Form: form,
	}
	if m := gjson.GetBytes(body, "model"); m.Type == gjson.String {
		rec.BodyModel = m.Str
	}
	if form != nil {
		rec.BodyModel = form.Fields["model"]
		rec.Stream = form.Fields["stream"] == "true"
	}
	rec.Model = rec.BodyModel
	if rt.deployment != "" {
		rec.Model = rt.deployment
	}
	if rt.op == "realtime" {
		rec.Model, rec.Deployment = upgradeModel(r)
		if rec.Deployment != "" {
			rec.Model = rec.Deployment
		}
	}
	rec.Stream = rec.Stream || gjson.GetBytes(body, "stream").Type == gjson.True
	rq := &request{r: r, rt: rt, body: body, model: rec.Model, stream: rec.Stream, form: form}
	seq, epoch := s.record(rec)
	rq.seq = seq
	sw := &statusWriter{ResponseWriter: w, s: s, epoch: epoch, seq: seq}
	defer func() {
		s.log.Debug("mock upstream request", "seq", rq.seq, "method", r.Method, "path", r.URL.Path,
			"model", rec.Model, "auth_header", authName, "status", sw.status, "cut", sw.cut)
	}()
	s.serve(sw, rq, cred, readErr)
}

func (s *Server) serve(w *statusWriter, rq *request, cred string, readErr error) {
	r, d := rq.r, rq.rt.dialect
	w.Header().Set("x-request-id", fmt.Sprintf("req_mock%06d", rq.seq))
	if d == dialectAnthropic {
		w.Header().Set("request-id", fmt.Sprintf("req_mock%06d", rq.seq))
	}
	if readErr != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(readErr, &tooLarge) {
			s.writeError(w, d, apiError{status: http.StatusRequestEntityTooLarge, typ: "invalid_request_error",
				message: "Request body too large (mock upstream)."})
			return
		}
		// A body shorter than its Content-Length, or a broken chunked body.
		msg := "Could not read the request body (mock upstream)."
		if formOps[rq.rt.op] {
			msg = "Could not parse multipart form (mock upstream): " + readErr.Error()
		}
		s.writeError(w, d, apiError{status: http.StatusBadRequest, typ: "invalid_request_error", message: msg})
		return
	}
	if rq.rt.op == "" {
		if d == dialectAzure {
			s.writeError(w, d, apiError{status: http.StatusNotFound, message: "Resource not found"})
			return
		}
		s.writeError(w, d, invalidURL(r.Method, r.URL.Path))
		return
	}
	want := http.MethodPost
	switch rq.rt.op {
	case "models", "realtime":
		want = http.MethodGet
	case "batches":
		want = r.Method // batches checks its own methods
	}
	if r.Method != want && objectOp(r.URL.Path) != rq.rt.op {
		w.Header().Set("allow", want)
		s.writeError(w, d, invalidMethod(d, r.Method, r.URL.Path))
		return
	}
	if d == dialectAzure && r.URL.Query().Get("api-version") == "" {
		s.writeError(w, d, apiError{status: http.StatusNotFound, message: "Resource not found"})
		return
	}
	if cred == "" {
		switch d {
		case dialectAnthropic:
			s.writeError(w, d, apiError{status: http.StatusUnauthorized, typ: "authentication_error",
				message: "x-api-key header is required"})
		case dialectAzure:
			s.writeError(w, d, apiError{status: http.StatusUnauthorized,
				message: "Access denied due to missing subscription key. Make sure to include subscription key when making requests to an API."})
		default:
			s.writeError(w, d, apiError{status: http.StatusUnauthorized, typ: "invalid_request_error", code: "invalid_api_key",
				message: "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."})
		}
		return
	}
	if d == dialectAnthropic && r.Header.Get("x-api-key") == "" {
		s.writeError(w, d, apiError{status: http.StatusUnauthorized, typ: "authentication_error",
			message: "x-api-key header is required"})
		return
	}
	if len(s.opts.Keys) > 0 && !slices.Contains(s.opts.Keys, cred) {
		s.writeError(w, d, behaviourError(Behaviour{Status: http.StatusUnauthorized}, d, rq.model))
		return
	}
	rq.b, rq.count = s.next(cred, r.URL.Path, rq.model)
	b := rq.b
	if b.Delay > 0 && !backoff.Sleep(r.Context(), b.Delay) {
		w.abort(false) // the client or the server went away: no answer at all
	}
	if b.Reset {
		w.reset()
	}
	s.rateLimitHeaders(w, rq)
	for k, v := range b.Headers {
		w.Header().Set(k, v)
	}
	if b.RetryAfter != "" {
		w.Header().Set("retry-after", b.RetryAfter)
	}
	if b.Body != "" {
		status := b.Status
		if status == 0 {
			status = http.StatusOK
		}
		if w.Header().Get("content-type") == "" {
			w.Header().Set("content-type", "application/json")
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, b.Body)
		return
	}
	if b.isError() {
		s.writeError(w, d, behaviourError(b, d, rq.model))
		return
	}
	switch rq.rt.op {
	case "chat":
		s.chat(w, rq)
	case "embeddings":
		s.embeddings(w, rq)
	case "models":
		s.listModels(w, rq)
	case "messages":
		s.messages(w, rq)
	case "files", "responses":
		s.objects(w, rq, cred)
	case "count_tokens":
		s.countTokens(w, rq)
	case "batches":
		if rq.rt.dialect == dialectAnthropic {
			s.batches(w, rq, cred)
		} else {
			s.objects(w, rq, cred)
		}
	case "realtime":
		s.realtime(w, rq)
	default:
		if formOps[rq.rt.op] {
			s.formAnswer(w, rq)
		}
	}
}

// rateLimitHeaders sets the provider's rate-limit headers: remaining 0 on
// a 429, else a budget that shrinks with the request count of the
// credential for the model (Behaviour.Headers replace any of them).
func (s *Server) rateLimitHeaders(w http.ResponseWriter, rq *request) {
	const reqLimit, tokLimit = 10000, 1000000
	remaining := max(reqLimit-rq.count, 0)
	tokens := max(tokLimit-PromptTokens(rq.body), 0)
	reset := "6ms"
	if rq.b.Status == http.StatusTooManyRequests {
		remaining, tokens = 0, 0
		reset = "1s"
		if _, err := strconv.Atoi(rq.b.RetryAfter); err == nil {
			reset = rq.b.RetryAfter + "s"
		}
	}
	h := w.Header()
	if rq.rt.dialect == dialectAnthropic {
		resetAt := s.now().Add(time.Minute).UTC().Format(time.RFC3339)
		h.Set("anthropic-ratelimit-requests-limit", strconv.Itoa(reqLimit))
		h.Set("anthropic-ratelimit-requests-remaining", strconv.Itoa(remaining))
		h.Set("anthropic-ratelimit-requests-reset", resetAt)
		h.Set("anthropic-ratelimit-tokens-limit", strconv.Itoa(tokLimit))
		h.Set("anthropic-ratelimit-tokens-remaining", strconv.Itoa(tokens))
		h.Set("anthropic-ratelimit-tokens-reset", resetAt)
		return
	}
	h.Set("x-ratelimit-limit-requests", strconv.Itoa(reqLimit))
	h.Set("x-ratelimit-remaining-requests", strconv.Itoa(remaining))
	h.Set("x-ratelimit-reset-requests", reset)
	h.Set("x-ratelimit-limit-tokens", strconv.Itoa(tokLimit))
	h.Set("x-ratelimit-remaining-tokens", strconv.Itoa(tokens))
	h.Set("x-ratelimit-reset-tokens", reset)
	if rq.rt.dialect == dialectAzure && rq.b.Status == http.StatusTooManyRequests {
		if secs, err := strconv.Atoi(rq.b.RetryAfter); err == nil {
			h.Set("retry-after-ms", strconv.Itoa(secs*1000))
			h.Set("x-ms-retry-after-ms", strconv.Itoa(secs*1000))
		}
	}
}

// writeError writes e as JSON in d's shape.
func (s *Server) writeError(w http.ResponseWriter, d dialect, e apiError) {
	w.Header().Set("content-type", "application/json")
	w.WriteHeader(e.status)
	_, _ = w.Write(e.body(d))
}
