package extproc

import (
	"testing"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
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
