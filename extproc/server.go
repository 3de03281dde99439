// Package extproc is keymux's Envoy external processor: the gRPC Process loop,
// a per-request state machine that follows Envoy's ext_proc protocol
// (docs/envoy-extproc.md), and the translation between Envoy's
// protos and keymux's decisions (policy) over the configuration mirrored in
// memory (store).
package extproc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/store/objects"
	"github.com/keymux/keymux/telemetry"
)

// Config configures a Server.
type Config struct {
	Store    *store.Store       // required
	Logger   *slog.Logger       // optional
	Observer telemetry.Observer // optional: call log, stats, traces
	Now      func() time.Time   // optional: the clock (tests)

	// The join of each forwarded call with Envoy's access-log entry
	// (AccessLogService): how long a record waits for its entry, when its
	// response ended or never came (EntryWait, default DefaultEntryWait)
	// and when its response was still under way at the end of the Process
	// stream (ResponseWait, default DefaultResponseWait), and how many
	// records may wait (PendingCap, default DefaultPendingCap).
	EntryWait    time.Duration
	ResponseWait time.Duration
	PendingCap   int

	// UsageFromBody reads token usage from response bodies: keymux asks
	// Envoy for JSON and SSE bodies (mode override to STREAMED, each chunk
	// a round trip) and books a call when its Process stream ends unless
	// an access-log stream is connected. For an Envoy configured without
	// the http_grpc logger or the usage filters. Off (the default), keymux
	// never overrides the body mode and every forwarded call waits for its
	// access-log entry.
	UsageFromBody bool

	// Objects records the account-scoped objects created through keymux
	// (files, batches, …) and authenticates stored responses' ids; nil
	// leaves object requests unscoped (any key serves them).
	Objects *objects.Registry
}

// Server implements Envoy's ExternalProcessor service.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer
	store    *store.Store
	log      *slog.Logger
	observer telemetry.Observer
	now      func() time.Time
	// realClock: now is time.Now, whose reading at the start of a
	// request-path phase serves the phase's decisions (exchange.now).
	realClock bool
	clients   sync.Map // client id → *clientCounters
	calls     sync.Map // call id → *attempts, while the call's Process stream is open
	requests  sync.Map // x-request-id → *attempts (or ambiguousRequest), likewise

	ledger     *ledger
	fromBody   bool          // Config.UsageFromBody
	closing    chan struct{} // closed by Drain: access-log streams end
	closeOnce  sync.Once
	open       atomic.Int64 // Process streams open
	messages   [len(messageKindList)]atomic.Uint64
	objects    *objects.Registry
	callPrefix string // random per process: call ids are unique across instances
	callSeq    atomic.Uint64
}

// The kinds of ext_proc messages (the "kind" label).
var messageKindList = [...]string{"request_headers", "request_body", "request_trailers",
	"response_headers", "response_body", "response_trailers", "unknown"}

// newCallID returns a new call id: it joins Envoy's access-log entry to
// keymux's record of the call (x-request-id is the client's to set). The
// id is written into buf, whose bytes the caller never changes afterwards
// (the string is buf's memory: no allocation).
func (s *Server) newCallID(buf []byte) string {
	b := strconv.AppendUint(append(buf[:0], s.callPrefix...), s.callSeq.Add(1), 36)
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// clientCounters are a client's requests and tokens of the current minute.
type clientCounters struct{ reqs, tokens store.MinuteCounter }

// clientMinute returns the counters of client id (lock-free once created).
func (s *Server) clientMinute(id string) *clientCounters {
	if v, ok := s.clients.Load(id); ok {
		return v.(*clientCounters)
	}
	v, _ := s.clients.LoadOrStore(id, new(clientCounters))
	return v.(*clientCounters)
}

var _ extprocv3.ExternalProcessorServer = (*Server)(nil)

// New validates cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("extproc: Config.Store is required")
	}
	s := &Server{store: cfg.Store, log: cfg.Logger, observer: cfg.Observer, now: cfg.Now, closing: make(chan struct{}), fromBody: cfg.UsageFromBody, objects: cfg.Objects}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.observer == nil {
		s.observer = telemetry.Nop{}
	}
	if s.now == nil {
		s.now, s.realClock = time.Now, true
	}
	for _, v := range []struct {
		d   *time.Duration
		def time.Duration
	}{{&cfg.EntryWait, DefaultEntryWait}, {&cfg.ResponseWait, DefaultResponseWait}} {
		if *v.d <= 0 {
			*v.d = v.def
		}
	}
	if cfg.PendingCap <= 0 {
		cfg.PendingCap = DefaultPendingCap
	}
	s.ledger = newLedger(cfg.EntryWait, cfg.ResponseWait, cfg.PendingCap, !cfg.UsageFromBody)
	var b [6]byte
	_, _ = rand.Read(b[:])
	s.callPrefix = hex.EncodeToString(b[:]) + "-"
	return s, nil
}

// sweepInterval is how often Run books the records whose entry did not
// come in time.
const sweepInterval = time.Second

// Run books, until ctx ends, the records whose access-log entry did not
// come within the wait.
func (s *Server) Run(ctx context.Context) {
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.ledger.sweep(s.now())
		}
	}
}

// Drain is the first step of a shutdown, once Envoy was told keymux is
// not serving: it waits for the open Process streams to end and for the
// access-log entries of the calls that ended, until ctx ends. Then it books
// the calls still waiting from what keymux saw and ends the access-log
// streams (Envoy reconnects elsewhere and resends nothing it had not sent).
func (s *Server) Drain(ctx context.Context) error {
	const tick = 20 * time.Millisecond
	err := pollUntil(ctx, tick, func() bool { return s.open.Load() == 0 })
	if err == nil {
		err = s.ledger.waitEmpty(ctx, tick)
	}
	s.closeOnce.Do(func() {
		close(s.closing)
		s.ledger.close()
	})
	if err != nil {
		return fmt.Errorf("extproc: drain: %w", err)
	}
	return nil
}

// Process serves one HTTP request's ext_proc stream: one reply per message,
// of the matching kind or an immediate response. io.EOF (half-close) and
// Canceled are the normal ends of a stream.
func (s *Server) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	ctx := stream.Context()
	s.open.Add(1)
	defer s.open.Add(-1)
	if slices.Contains(metadata.ValueFromIncomingContext(ctx, FilterMetadataKey), FilterUpstream) {
		return s.processAttempt(stream)
	}
	x := newExchange(s)
	x.sctx = ctx
	defer x.finish()
	// A call held for its access-log entry must not keep the ended stream
	// (its context, gRPC's stream and metadata) alive: nothing after the
	// stream uses it.
	defer func() { x.sctx = nil }()
	defer x.releaseReplies() // before finish: nothing reads a reply after the stream
	for {
		if err := ctx.Err(); err != nil {
			return nil
		}
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
			return nil
		}
		if err != nil {
			return fmt.Errorf("extproc: receive: %w", err)
		}
		resp, err := x.handle(req)
		if err != nil {
			s.log.Error("ext_proc message refused", "request_id", x.call.RequestID, "error", err)
			return status.Error(codes.InvalidArgument, err.Error())
		}
		if err := stream.Send(resp); err != nil {
			if status.Code(err) == codes.Canceled || errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("extproc: send: %w", err)
		}
	}
}

// processAttempt serves the upstream filter's stream of one upstream
// attempt (attempt.go).
func (s *Server) processAttempt(stream extprocv3.ExternalProcessor_ProcessServer) error {
	u := &upstreamExchange{s: s}
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
			return nil
		}
		if err != nil {
			return fmt.Errorf("extproc: receive: %w", err)
		}
		s.countMessage(req)
		if err := stream.Send(u.handle(req)); err != nil {
			if status.Code(err) == codes.Canceled || errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("extproc: send: %w", err)
		}
	}
}
