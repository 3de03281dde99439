package extproc

import (
	"context"
	"io"
	"syscall"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/keymux/keymux/telemetry"
)

// BenchmarkAccessLogBooking is keymux's work to complete one call from its
// access-log entry: the record held at the end of the Process stream, the
// entry read (flags, timings, keymux.usage), joined and booked (usage on
// the key), as one entry of a batch. The request path is not included.
func BenchmarkAccessLogBooking(b *testing.B) {
	st := benchStore(b, 10, "round_robin")
	s, _ := New(Config{Store: st, Observer: telemetry.Nop{}})
	s.ledger.streamStarted()
	body := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{
		Body: []byte(`{"model":"gpt-4","messages":[]}`), EndOfStream: true}}}
	usage := map[string]*structpb.Value{metaInputTokens: structpb.NewNumberValue(120), metaOutputTokens: structpb.NewNumberValue(340)}
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		x := newExchange(s)
		x.handle(chatHeaders())
		x.handle(body)
		x.handle(responseHeaders("200", false))
		e := entry(x.callID, 200, usageMeta(usage))
		e.CommonProperties.Metadata.FilterMetadata[MetadataNamespace].Fields[metaKeyID] = structpb.NewStringValue(x.call.KeyID)
		msg := &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
			HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: []*accesslogv3.HTTPAccessLogEntry{
				e,
			}}}}
		b.StartTimer()
		x.finish()
		s.accessLogs(msg)
	}
	if st := s.AccessLogStatus(); st.Matched != uint64(b.N) {
		b.Fatalf("matched %d of %d: %+v", st.Matched, b.N, st)
	}
}

// BenchmarkResponsePath is one streamed chat completion (30 SSE chunks) as
// Envoy and keymux exchange it over loopback gRPC, the request side
// included: with the access log (no response body message; the call's
// entry sent in batches of 10, as Envoy's 100 ms flush batches them at
// ~100 requests/s) and with UsageFromBody (the body switched to STREAMED:
// a round trip per chunk). cpu-µs/op is the process's CPU time (Envoy's
// side of the exchange too) per call.
func BenchmarkResponsePath(b *testing.B) {
	const chunks, batchSize = 30, 10
	chunk := []byte(`data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"word "}}]}` + "\n\n")
	last := []byte(`data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30}}` + "\n\ndata: [DONE]\n\n")
	reqBody := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{
		Body: []byte(`{"model":"gpt-4","stream":true,"messages":[]}`), EndOfStream: true}}}
	usage := map[string]*structpb.Value{metaInputTokens: structpb.NewNumberValue(12), metaOutputTokens: structpb.NewNumberValue(30)}
	for _, fromBody := range []bool{false, true} {
		name := "access_log"
		if fromBody {
			name = "streamed_body"
		}
		b.Run(name, func(b *testing.B) {
			st := benchStore(b, 10, "round_robin")
			s, _ := New(Config{Store: st, Observer: telemetry.Nop{}, UsageFromBody: fromBody})
			conn := loopback(b, func(srv *grpc.Server) {
				extprocv3.RegisterExternalProcessorServer(srv, s)
				alsv3.RegisterAccessLogServiceServer(srv, s.AccessLogService())
			})
			client := extprocv3.NewExternalProcessorClient(conn)
			var logs grpc.ClientStreamingClient[alsv3.StreamAccessLogsMessage, alsv3.StreamAccessLogsResponse]
			if !fromBody {
				var err error
				if logs, err = alsv3.NewAccessLogServiceClient(conn).StreamAccessLogs(b.Context()); err != nil {
					b.Fatal(err)
				}
				if err := logs.Send(&alsv3.StreamAccessLogsMessage{Identifier: &alsv3.StreamAccessLogsMessage_Identifier{LogName: "keymux"}}); err != nil {
					b.Fatal(err)
				}
			}
			var pending []*accesslogv3.HTTPAccessLogEntry
			flush := func() {
				if len(pending) == 0 {
					return
				}
				if err := logs.Send(&alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
					HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: pending}}}); err != nil {
					b.Fatal(err)
				}
				pending = nil
			}
			exchange := func(stream extprocv3.ExternalProcessor_ProcessClient, m *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
				if err := stream.Send(m); err != nil {
					b.Fatal(err)
				}
				resp, err := stream.Recv()
				if err != nil {
					b.Fatal(err)
				}
				return resp
			}
			cpu0 := cpuTime()
			b.ReportAllocs()
			for b.Loop() {
				stream, err := client.Process(b.Context())
				if err != nil {
					b.Fatal(err)
				}
				exchange(stream, chatHeaders())
				md := exchange(stream, reqBody).GetDynamicMetadata().GetFields()[MetadataNamespace].GetStructValue().GetFields()
				if resp := exchange(stream, responseHeaders("200", false)); (resp.GetModeOverride() != nil) != fromBody {
					b.Fatalf("mode override %v", resp.GetModeOverride())
				}
				if fromBody {
					for i := range chunks {
						data := chunk
						if i == chunks-1 {
							data = last
						}
						exchange(stream, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
							ResponseBody: &extprocv3.HttpBody{Body: data, EndOfStream: i == chunks-1}}})
					}
				}
				stream.CloseSend()
				if _, err := stream.Recv(); err != io.EOF {
					b.Fatalf("end of stream: %v", err)
				}
				if !fromBody {
					e := entry(md[metaCallID].GetStringValue(), 200, usageMeta(usage))
					e.CommonProperties.Metadata.FilterMetadata[MetadataNamespace].Fields[metaKeyID] = md[metaKeyID]
					if pending = append(pending, e); len(pending) == batchSize {
						flush()
					}
				}
			}
			if !fromBody {
				flush()
			}
			ctx, cancel := context.WithTimeout(b.Context(), 10*time.Second)
			defer cancel()
			if err := pollUntil(ctx, time.Millisecond, func() bool { return s.ledger.pendingLen() == 0 && s.open.Load() == 0 }); err != nil {
				b.Fatalf("calls still waiting: %+v", s.AccessLogStatus())
			}
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
			if got := s.Messages()["response_body"]; fromBody != (got > 0) {
				b.Fatalf("%d response body messages", got)
			}
		})
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
