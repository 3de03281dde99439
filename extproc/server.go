// Package extproc is keymux's Envoy external processor: the gRPC Process loop,
// a per-request state machine that follows Envoy's ext_proc protocol
// (docs/envoy-extproc.md), and the translation between Envoy's
// protos and keymux's decisions (policy) over the configuration mirrored in
// memory (store).
package extproc

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/telemetry"
)

// Config configures a Server.
type Config struct {
	Store    *store.Store       // required
	Logger   *slog.Logger       // optional
	Observer telemetry.Observer // optional: call log, stats, traces
	Now      func() time.Time   // optional: the clock (tests)
}

// Server implements Envoy's ExternalProcessor service.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer
	store    *store.Store
	log      *slog.Logger
	observer telemetry.Observer
	now      func() time.Time
	clients  sync.Map // client id → *clientCounters
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
	s := &Server{store: cfg.Store, log: cfg.Logger, observer: cfg.Observer, now: cfg.Now}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.observer == nil {
		s.observer = telemetry.Nop{}
	}
	if s.now == nil {
		s.now = time.Now
	}
	return s, nil
}

// Process serves one HTTP request's ext_proc stream: one reply per message,
// of the matching kind or an immediate response. io.EOF (half-close) and
// Canceled are the normal ends of a stream.
func (s *Server) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	ctx := stream.Context()
	x := newExchange(s)
	defer x.finish()
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
