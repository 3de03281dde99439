package extproc

import (
	"errors"
	"fmt"
	"io"

	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// AccessLogService is Envoy's AccessLogService
// (envoy.service.accesslog.v3): the envoy.access_loggers.http_grpc logger
// streams every request's entry to it, and keymux books each forwarded call
// with Envoy's account of it (see ledger).
type AccessLogService struct {
	alsv3.UnimplementedAccessLogServiceServer
	s *Server
}

var _ alsv3.AccessLogServiceServer = (*AccessLogService)(nil)

// AccessLogService returns the server's access-log service, to register
// on the gRPC server next to the ext_proc service.
func (s *Server) AccessLogService() *AccessLogService { return &AccessLogService{s: s} }

// StreamAccessLogs reads one Envoy's stream of batched entries until Envoy
// ends it or the server drains (Drain). It never answers: Envoy expects
// nothing back until the stream ends.
func (a *AccessLogService) StreamAccessLogs(stream alsv3.AccessLogService_StreamAccessLogsServer) error {
	s := a.s
	l := s.ledger
	l.streamStarted()
	defer func() { l.streamEnded(s.now()) }()
	ctx := stream.Context()
	msgs := make(chan *alsv3.StreamAccessLogsMessage)
	errc := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			select {
			case msgs <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case <-s.closing:
			return nil
		case <-ctx.Done():
			return nil
		case err := <-errc:
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil
			}
			return fmt.Errorf("extproc: access log: receive: %w", err)
		case m := <-msgs:
			s.accessLogs(m)
		}
	}
}

// accessLogs books one batch of entries.
func (s *Server) accessLogs(m *alsv3.StreamAccessLogsMessage) {
	l := s.ledger
	if m.GetHttpLogs() == nil {
		if m.GetTcpLogs() != nil {
			l.drop(dropMalformed, uint64(len(m.GetTcpLogs().GetLogEntry())))
		}
		return
	}
	now := s.now()
	for _, e := range m.GetHttpLogs().GetLogEntry() {
		rec, err := readEntry(e)
		switch {
		case err == nil:
			l.entry(rec, now)
		case errors.Is(err, errNotForwarded):
			l.drop(dropNotForwarded, 1)
		case errors.Is(err, errIntermediate):
			l.drop(dropIntermediate, 1)
		default:
			l.drop(dropMalformed, 1)
			s.log.Debug("access-log entry dropped", "call_id", rec.callID, "error", err)
		}
	}
}
