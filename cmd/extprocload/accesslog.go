package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/keymux/keymux/envoy/emulator"
	"github.com/keymux/keymux/extproc"
)

// How the shipped envoy.yaml configures envoy.access_loggers.http_grpc
// towards keymux (buffer_size_bytes: Envoy's default).
const (
	alsLogName = "keymux"
	alsFlush   = 100 * time.Millisecond
)

// usageMeta is what json_to_metadata (in the shipped envoy.yaml) writes
// for the upstream's response: its token usage.
var usageMeta = &structpb.Struct{Fields: map[string]*structpb.Value{
	"input_tokens": structpb.NewNumberValue(230), "output_tokens": structpb.NewNumberValue(64),
}}

// accessLog is Envoy's access logger towards one server.
type accessLog struct {
	sender *emulator.AccessLogSender
	logged atomic.Int64 // entries handed to the sender
	stop   func()
}

// playAccessLog starts Envoy's access logger towards s: its
// AccessLogService gets one entry per request, batched and flushed as
// Envoy does.
func (s *server) playAccessLog() error {
	sender, err := emulator.NewAccessLogSender(s.conn, alsLogName, alsFlush, 0)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		sender.Run(ctx)
	}()
	s.als = &accessLog{sender: sender, stop: func() { cancel(); <-done }}
	return nil
}

// logRequest hands the entry of request r of x to s's access logger (none:
// nothing). r has its times, md the replies' dynamic metadata; the rest is
// what Envoy knows of the request and of the upstream's response.
func (s *server) logRequest(x exchange, r *emulator.Request, md *metadataBytes) {
	if s.als == nil {
		return
	}
	r.RequestHeaders = x.msgs[0].GetRequestHeaders().GetHeaders()
	r.ResponseHeaders = x.msgs[respHeadersMsg].GetResponseHeaders().GetHeaders()
	r.Status, r.Attempts, r.Protocol = http.StatusOK, 1, "HTTP/1.1"
	r.BytesReceived = int64(len(x.msgs[1].GetRequestBody().GetBody()))
	r.BytesSent = respBodyBytes
	r.UpstreamCluster, r.RouteName = "keymux_upstream_https", "keymux_upstream_https"
	if r.Metadata == nil {
		r.Metadata = map[string]*structpb.Struct{}
	}
	r.Metadata[extproc.UsageNamespace] = usageMeta
	entry := emulator.HTTPAccessLogEntry(r)
	md.appendTo(entry.GetCommonProperties().GetMetadata())
	s.als.sender.Log(entry)
	s.als.logged.Add(1)
}

// joinWait bounds how long the last entries may take to be booked:
// keymux's entry wait.
const joinWait = extproc.DefaultEntryWait

// checkJoin waits until keymux has booked every entry sent to it with its
// call, and fails when one was dropped or a call was booked without its
// entry. It prints the count.
func (s *server) checkJoin(ctx context.Context, w io.Writer) error {
	if s.als == nil {
		return nil
	}
	want := uint64(s.als.logged.Load())
	if n := s.als.sender.Dropped(); n > 0 {
		return fmt.Errorf("access log: %d of %d entries dropped by the sender: keymux did not keep up", n, want)
	}
	deadline := time.Now().Add(joinWait)
	t := time.NewTicker(alsFlush)
	defer t.Stop()
	for {
		st, err := accessLogStatus(ctx, s.admin)
		if err != nil {
			return err
		}
		var dropped, unmatched uint64
		for _, n := range st.Dropped {
			dropped += n
		}
		for _, n := range st.Unmatched {
			unmatched += n
		}
		switch settled := st.Matched+dropped+unmatched >= want; {
		case settled && st.Entries == want && st.Matched == want && dropped == 0 && unmatched == 0:
			fmt.Fprintf(w, "\naccess log: %d entries sent to keymux, %d booked with their call, none dropped\n", want, st.Matched)
			return nil
		case settled || time.Now().After(deadline):
			return fmt.Errorf("access log: %d entries sent; keymux received %d, booked %d with their call, dropped %v, booked %v without their entry",
				want, st.Entries, st.Matched, st.Dropped, st.Unmatched)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// accessLogStatus reads the access_log part of keymux's /status.
func accessLogStatus(ctx context.Context, admin string) (extproc.AccessLogStatus, error) {
	var doc struct {
		AccessLog extproc.AccessLogStatus `json:"access_log"`
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/status", nil)
	if err != nil {
		return doc.AccessLog, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return doc.AccessLog, fmt.Errorf("keymux /status: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return doc.AccessLog, fmt.Errorf("keymux /status: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		return doc.AccessLog, fmt.Errorf("keymux /status: %w", err)
	}
	return doc.AccessLog, nil
}

// noopAccessLog is an AccessLogService that reads and discards every
// entry: the no-op server gets the same traffic as keymux.
type noopAccessLog struct {
	alsv3.UnimplementedAccessLogServiceServer
}

func (noopAccessLog) StreamAccessLogs(stream alsv3.AccessLogService_StreamAccessLogsServer) error {
	for {
		if _, err := stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}
