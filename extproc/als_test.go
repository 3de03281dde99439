package extproc

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/keymux/keymux/policy"
	"github.com/keymux/keymux/store"
	"github.com/keymux/keymux/telemetry"
	"github.com/keymux/keymux/testutil/fakeclock"
)

// all returns a copy of the calls that ended.
func (r *recorder) all() []telemetry.Call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]telemetry.Call(nil), r.ends...)
}

// signalRecorder is a recorder that also sends each ended call on ended.
type signalRecorder struct {
	recorder
	ended chan telemetry.Call
}

func (r *signalRecorder) End(c *telemetry.Call) {
	r.recorder.End(c)
	r.ended <- *c
}

// alsFixture is a Server over one key (k0) and client (c1), on a fake
// clock, with an access-log stream counted as connected.
type alsFixture struct {
	s     *Server
	st    *store.Store
	clock *fakeclock.Clock
	rec   *recorder
}

func newALSFixture(t *testing.T, cfg Config) *alsFixture {
	t.Helper()
	f := &alsFixture{st: benchStore(t, 1, "round_robin"), clock: fakeclock.New(t0), rec: &recorder{}}
	cfg.Store, cfg.Now, cfg.Observer = f.st, f.clock.Now, f.rec
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.s = s
	s.ledger.streamStarted()
	return f
}

func (f *alsFixture) key() *store.Entry { return f.st.Read().Key("k0") }

// forward runs a chat request through an exchange up to the forwarding
// reply and returns the exchange and the call id keymux put in its
// dynamic metadata.
func (f *alsFixture) forward(t *testing.T) (*exchange, string) {
	t.Helper()
	x := newExchange(f.s)
	body := []byte(`{"model":"gpt-4","messages":[]}`)
	for _, m := range []*extprocv3.ProcessingRequest{chatHeaders(), {Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: body, EndOfStream: true}}}} {
		resp, err := x.handle(m)
		if err != nil {
			t.Fatal(err)
		}
		if md := resp.GetDynamicMetadata(); md != nil {
			return x, md.GetFields()[MetadataNamespace].GetStructValue().GetFields()[metaCallID].GetStringValue()
		}
	}
	t.Fatalf("no forwarding reply: phase %d, call %+v", x.phase, x.call)
	return nil, ""
}

func chatHeaders() *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
		Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			hv(":authority", "gw.local"), hv(":path", "/v1/chat/completions"), hv(":method", "POST"),
			hv("authorization", "Bearer km-bench-token"), hv("content-type", "application/json"), hv("x-request-id", "r1"),
		}},
	}}}
}

func responseHeaders(status string, eos bool) *extprocv3.ProcessingRequest {
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{
		Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			hv(":status", status), hv("content-type", "text/event-stream"),
		}}, EndOfStream: eos,
	}}}
}

// entry builds Envoy's access-log entry for callID.
type entryOpt func(*accesslogv3.HTTPAccessLogEntry)

func entry(callID string, status uint32, opts ...entryOpt) *accesslogv3.HTTPAccessLogEntry {
	e := &accesslogv3.HTTPAccessLogEntry{
		CommonProperties: &accesslogv3.AccessLogCommon{
			StartTime:     timestamppb.New(t0),
			ResponseFlags: &accesslogv3.ResponseFlags{},
			Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
				MetadataNamespace: {Fields: map[string]*structpb.Value{
					metaCallID: structpb.NewStringValue(callID), metaKeyID: structpb.NewStringValue("k0"),
				}},
			}},
		},
		Response: &accesslogv3.HTTPResponseProperties{},
	}
	if status != 0 {
		e.Response.ResponseCode = wrapperspb.UInt32(status)
	}
	for _, o := range opts {
		o(e)
	}
	return e
}

func flags(f *accesslogv3.ResponseFlags) entryOpt {
	return func(e *accesslogv3.HTTPAccessLogEntry) { e.CommonProperties.ResponseFlags = f }
}

func lastByte(d time.Duration) entryOpt {
	return func(e *accesslogv3.HTTPAccessLogEntry) {
		e.CommonProperties.TimeToLastDownstreamTxByte = durationpb.New(d)
		e.CommonProperties.Duration = durationpb.New(d)
	}
}

func usageMeta(fields map[string]*structpb.Value) entryOpt {
	return func(e *accesslogv3.HTTPAccessLogEntry) {
		e.CommonProperties.Metadata.FilterMetadata[UsageNamespace] = &structpb.Struct{Fields: fields}
	}
}

func batch(entries ...*accesslogv3.HTTPAccessLogEntry) *alsv3.StreamAccessLogsMessage {
	return &alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: entries}}}
}

// TestBookingByFlag: what one entry does to the call and the key, the
// entry arriving after the Process stream ended.
func TestBookingByFlag(t *testing.T) {
	uf := &accesslogv3.ResponseFlags{UpstreamConnectionFailure: true}
	tests := []struct {
		name      string
		respHdrs  string // the status keymux saw on the stream, "" for none
		e         func(id string) *accesslogv3.HTTPAccessLogEntry
		status    int
		errorCode string
		truncated bool
		failures  int // the key's consecutive failures afterwards
		errors    uint64
	}{
		{"UF connect failure", "", func(id string) *accesslogv3.HTTPAccessLogEntry { return entry(id, 503, flags(uf)) }, 503, "server", false, 1, 1},
		{"UC reset before headers", "", func(id string) *accesslogv3.HTTPAccessLogEntry {
			return entry(id, 503, flags(&accesslogv3.ResponseFlags{UpstreamConnectionTermination: true}))
		}, 503, "server", false, 1, 1},
		{"UR URX remote reset, retries exhausted", "", func(id string) *accesslogv3.HTTPAccessLogEntry {
			return entry(id, 503, flags(&accesslogv3.ResponseFlags{UpstreamRemoteReset: true, UpstreamRetryLimitExceeded: true}))
		}, 503, "server", false, 1, 1},
		{"URX alone: retries ran out on a 503 the key was fed", "503", func(id string) *accesslogv3.HTTPAccessLogEntry {
			return entry(id, 503, flags(&accesslogv3.ResponseFlags{UpstreamRetryLimitExceeded: true}))
		}, 503, "server", false, 1, 1},
		{"UT upstream timeout", "", func(id string) *accesslogv3.HTTPAccessLogEntry {
			return entry(id, 504, flags(&accesslogv3.ResponseFlags{UpstreamRequestTimeout: true}))
		}, 504, "timeout", false, 1, 1},
		{"UC mid-stream after 200", "200", func(id string) *accesslogv3.HTTPAccessLogEntry {
			return entry(id, 200, flags(&accesslogv3.ResponseFlags{UpstreamConnectionTermination: true}))
		}, 200, "server", true, 1, 1},
		{"DC client abort mid-stream", "200", func(id string) *accesslogv3.HTTPAccessLogEntry {
			return entry(id, 200, flags(&accesslogv3.ResponseFlags{DownstreamConnectionTermination: true}))
		}, 200, "stream_cut", true, 0, 0},
		{"DC closing an upgraded stream (101) is its end", "101", func(id string) *accesslogv3.HTTPAccessLogEntry {
			return entry(id, 101, flags(&accesslogv3.ResponseFlags{DownstreamConnectionTermination: true}))
		}, 101, "", false, 0, 0},
		{"DC before any response", "", func(id string) *accesslogv3.HTTPAccessLogEntry {
			return entry(id, 0, flags(&accesslogv3.ResponseFlags{DownstreamConnectionTermination: true, UpstreamConnectionTermination: true}))
		}, 0, "stream_cut", true, 0, 0},
		{"UO overflow is not the key's", "", func(id string) *accesslogv3.HTTPAccessLogEntry {
			return entry(id, 503, flags(&accesslogv3.ResponseFlags{UpstreamOverflow: true}))
		}, 503, "server", false, 0, 0},
		{"NR no route is not the key's", "", func(id string) *accesslogv3.HTTPAccessLogEntry {
			return entry(id, 404, flags(&accesslogv3.ResponseFlags{NoRouteFound: true}))
		}, 404, "client", false, 0, 0},
		{"413 buffer overflow local reply", "", func(id string) *accesslogv3.HTTPAccessLogEntry { return entry(id, 413) }, 413, "client", false, 0, 0},
		{"200 complete", "200", func(id string) *accesslogv3.HTTPAccessLogEntry { return entry(id, 200) }, 200, "", false, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newALSFixture(t, Config{})
			x, id := f.forward(t)
			if tc.respHdrs != "" {
				if _, err := x.handle(responseHeaders(tc.respHdrs, false)); err != nil {
					t.Fatal(err)
				}
			}
			x.finish()
			if n := len(f.rec.all()); n != 0 {
				t.Fatalf("%d calls booked before the entry", n)
			}
			f.s.accessLogs(batch(tc.e(id)))
			calls := f.rec.all()
			if len(calls) != 1 {
				t.Fatalf("calls booked: %d, want 1", len(calls))
			}
			c := calls[0]
			if c.Status != tc.status || c.ErrorCode != tc.errorCode || c.Truncated != tc.truncated || c.KeyID != "k0" {
				t.Errorf("call status %d error %q truncated %v key %q; want %d %q %v k0", c.Status, c.ErrorCode, c.Truncated, c.KeyID, tc.status, tc.errorCode, tc.truncated)
			}
			k := f.key().RT
			if got := k.State().ConsecutiveFailures; got != tc.failures {
				t.Errorf("consecutive failures %d, want %d", got, tc.failures)
			}
			if got := k.Errors(); got != tc.errors {
				t.Errorf("key errors %d, want %d", got, tc.errors)
			}
			if st := f.s.AccessLogStatus(); st.Matched != 1 || st.Entries != 1 || st.Pending != 0 {
				t.Errorf("status %+v", st)
			}
		})
	}
}

// TestEjectionFromAccessLog: a key whose upstream refuses connections is
// ejected after ejection.consecutive_failures (3 by default) entries, as
// after as many 5xx.
func TestEjectionFromAccessLog(t *testing.T) {
	for _, fl := range []struct {
		name  string
		flags *accesslogv3.ResponseFlags
	}{
		{"UF", &accesslogv3.ResponseFlags{UpstreamConnectionFailure: true}},
		{"UC", &accesslogv3.ResponseFlags{UpstreamConnectionTermination: true}},
		{"UT", &accesslogv3.ResponseFlags{UpstreamRequestTimeout: true}},
	} {
		t.Run(fl.name, func(t *testing.T) {
			f := newALSFixture(t, Config{})
			for i := range 3 {
				if !f.key().RT.State().EjectedUntil.IsZero() {
					t.Fatalf("ejected after %d failures", i)
				}
				x, id := f.forward(t)
				x.finish()
				f.s.accessLogs(batch(entry(id, 503, flags(fl.flags))))
			}
			ks := f.key().RT.State()
			if want := t0.Add(30 * time.Second); !ks.EjectedUntil.Equal(want) {
				t.Errorf("ejected until %v, want %v", ks.EjectedUntil, want)
			}
			if got := f.key().RT.Ejections(); got != 1 {
				t.Errorf("ejections %d, want 1", got)
			}
		})
	}
}

// TestUsageFromAccessLog: the tokens Envoy's filters put in keymux.usage
// are booked on the call, the key and the client, with Envoy's duration.
func TestUsageFromAccessLog(t *testing.T) {
	tests := []struct {
		name    string
		fields  map[string]*structpb.Value
		known   bool
		in, out int64
	}{
		{"numbers", map[string]*structpb.Value{metaInputTokens: structpb.NewNumberValue(12), metaOutputTokens: structpb.NewNumberValue(34)}, true, 12, 34},
		{"strings", map[string]*structpb.Value{metaInputTokens: structpb.NewStringValue("7"), metaOutputTokens: structpb.NewStringValue("0")}, true, 7, 0},
		{"input only", map[string]*structpb.Value{metaInputTokens: structpb.NewNumberValue(5)}, true, 5, 0},
		{"none", nil, false, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newALSFixture(t, Config{})
			x, id := f.forward(t)
			if _, err := x.handle(responseHeaders("200", false)); err != nil {
				t.Fatal(err)
			}
			f.clock.Advance(50 * time.Millisecond) // the Process stream ends after the headers
			x.finish()
			f.s.accessLogs(batch(entry(id, 200, lastByte(3*time.Second), usageMeta(tc.fields))))
			c := f.rec.all()[0]
			if c.UsageKnown != tc.known || c.InputTokens != tc.in || c.OutputTokens != tc.out {
				t.Errorf("usage %v %d/%d, want %v %d/%d", c.UsageKnown, c.InputTokens, c.OutputTokens, tc.known, tc.in, tc.out)
			}
			if d := c.End.Sub(c.Start); d != 3*time.Second {
				t.Errorf("duration %v, want Envoy's 3s", d)
			}
			tokens := uint64(tc.in + tc.out)
			if got := f.key().RT.Usage(); got != tokens {
				t.Errorf("key usage %d, want %d", got, tokens)
			}
			if got := f.key().RT.MinuteTokens.Get(f.clock.Now()); got != tokens {
				t.Errorf("key minute tokens %d, want %d", got, tokens)
			}
			if got := f.s.clientMinute("c1").tokens.Get(f.clock.Now()); got != tokens {
				t.Errorf("client minute tokens %d, want %d", got, tokens)
			}
		})
	}
}

// TestQuotaFromAccessLog: a 429 whose JSON error body says
// insufficient_quota disables the key (the code read by json_to_metadata).
func TestQuotaFromAccessLog(t *testing.T) {
	f := newALSFixture(t, Config{})
	x, id := f.forward(t)
	if _, err := x.handle(responseHeaders("429", false)); err != nil {
		t.Fatal(err)
	}
	x.finish()
	f.s.accessLogs(batch(entry(id, 429, usageMeta(map[string]*structpb.Value{metaErrorCode: structpb.NewStringValue("insufficient_quota")}))))
	if ks := f.key().RT.State(); !ks.Disabled || ks.DisabledReason != policy.DisabledQuota {
		t.Errorf("key state %+v, want disabled for quota", ks)
	}
}

// TestJoinOrders: the entry may come before the Process stream's end, after
// it, never, or twice; entries keymux cannot join are counted and dropped.
func TestJoinOrders(t *testing.T) {
	f := newALSFixture(t, Config{})

	// Entry first: held until the record arrives.
	x, id := f.forward(t)
	f.s.accessLogs(batch(entry(id, 200, lastByte(time.Second))))
	if n := len(f.rec.all()); n != 0 {
		t.Fatalf("booked %d calls before the stream ended", n)
	}
	x.finish()
	if calls := f.rec.all(); len(calls) != 1 || calls[0].Status != 200 || calls[0].End.Sub(calls[0].Start) != time.Second {
		t.Fatalf("entry first: %+v", calls)
	}
	// A duplicate of a booked entry.
	f.s.accessLogs(batch(entry(id, 200)))

	// Record first, no entry within the wait: booked from keymux's view.
	x2, id2 := f.forward(t)
	x2.finish()
	f.clock.Advance(DefaultEntryWait - time.Millisecond)
	f.s.ledger.sweep(f.clock.Now())
	if n := len(f.rec.all()); n != 1 {
		t.Fatalf("booked before the wait ended: %d", n)
	}
	f.clock.Advance(time.Millisecond)
	f.s.ledger.sweep(f.clock.Now())
	calls := f.rec.all()
	if len(calls) != 2 || !calls[1].Truncated || calls[1].ErrorCode != "stream_cut" || calls[1].Status != 0 {
		t.Fatalf("timed out: %+v", calls[1:])
	}
	// Its entry comes late.
	f.s.accessLogs(batch(entry(id2, 503)))

	// An unknown call id, forgotten after the wait; malformed and
	// intermediate entries, and a request keymux answered itself.
	noCallID := entry("x", 401)
	delete(noCallID.CommonProperties.Metadata.FilterMetadata, MetadataNamespace)
	periodic := entry("p", 200)
	periodic.CommonProperties.AccessLogType = accesslogv3.AccessLogType_DownstreamPeriodic
	f.s.accessLogs(batch(
		entry("nobody", 200),
		&accesslogv3.HTTPAccessLogEntry{},
		entry("bad-status", 42),
		entry("", 200),
		noCallID, periodic,
	))
	f.s.accessLogs(&alsv3.StreamAccessLogsMessage{}) // identifier only
	f.clock.Advance(DefaultEntryWait)
	f.s.ledger.sweep(f.clock.Now())

	st := f.s.AccessLogStatus()
	want := map[string]uint64{dropDuplicate: 1, dropLate: 1, dropUnknown: 1, dropMalformed: 3, dropNotForwarded: 1, dropIntermediate: 1, dropFull: 0}
	for r, n := range want {
		if st.Dropped[r] != n {
			t.Errorf("dropped[%s] = %d, want %d", r, st.Dropped[r], n)
		}
	}
	if st.Matched != 1 || st.Unmatched[unmatchedTimeout] != 1 || st.Pending != 0 {
		t.Errorf("status %+v", st)
	}
	if n := len(f.rec.all()); n != 2 {
		t.Errorf("calls booked: %d, want 2", n)
	}
}

// TestResponseWait: a record whose response was under way when the stream
// ended waits ResponseWait, not EntryWait.
func TestResponseWait(t *testing.T) {
	f := newALSFixture(t, Config{EntryWait: time.Second, ResponseWait: time.Minute})
	x, _ := f.forward(t)
	if _, err := x.handle(responseHeaders("200", false)); err != nil {
		t.Fatal(err)
	}
	x.finish()
	f.clock.Advance(59 * time.Second)
	f.s.ledger.sweep(f.clock.Now())
	if n := len(f.rec.all()); n != 0 {
		t.Fatalf("booked before ResponseWait: %d", n)
	}
	f.clock.Advance(time.Second)
	f.s.ledger.sweep(f.clock.Now())
	if calls := f.rec.all(); len(calls) != 1 || calls[0].Status != 200 || calls[0].Truncated {
		t.Fatalf("after ResponseWait: %+v", calls)
	}
}

// TestBoundedTable: past PendingCap records are booked at once; with
// UsageFromBody and no access-log stream nothing waits.
func TestBoundedTable(t *testing.T) {
	f := newALSFixture(t, Config{PendingCap: 1})
	x1, _ := f.forward(t)
	x1.finish()
	x2, _ := f.forward(t)
	x2.finish()
	if n := len(f.rec.all()); n != 1 {
		t.Fatalf("booked %d, want the second record at once", n)
	}
	f.s.accessLogs(batch(entry("e1", 200), entry("e2", 200)))
	st := f.s.AccessLogStatus()
	if st.Pending != 1 || st.Unmatched[unmatchedFull] != 1 || st.Dropped[dropFull] != 1 {
		t.Errorf("status %+v", st)
	}

	f = newALSFixture(t, Config{UsageFromBody: true})
	f.s.ledger.streamEnded(f.clock.Now())
	f.clock.Advance(DefaultEntryWait - time.Millisecond)
	x3, _ := f.forward(t)
	x3.finish()
	if n := len(f.rec.all()); n != 0 {
		t.Fatalf("a reconnect is expected within the wait; booked %d", n)
	}
	f.clock.Advance(time.Millisecond)
	x4, _ := f.forward(t)
	x4.finish()
	if st := f.s.AccessLogStatus(); len(f.rec.all()) != 1 || st.Unmatched[unmatchedNoLog] != 1 || st.Pending != 1 {
		t.Errorf("no stream: booked %d, status %+v", len(f.rec.all()), st)
	}
}

// fakeALSStream is Envoy's side of StreamAccessLogs: Recv returns the
// messages sent on in, then io.EOF once in is closed.
type fakeALSStream struct {
	grpc.ServerStream
	ctx context.Context
	in  chan *alsv3.StreamAccessLogsMessage
}

func (s *fakeALSStream) Context() context.Context { return s.ctx }
func (s *fakeALSStream) Recv() (*alsv3.StreamAccessLogsMessage, error) {
	select {
	case m, ok := <-s.in:
		if !ok {
			return nil, io.EOF
		}
		return m, nil
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	}
}
func (s *fakeALSStream) SendAndClose(*alsv3.StreamAccessLogsResponse) error { return nil }

// TestStreamAccessLogs: the handler books the entries of a stream in order
// and counts the stream while it is open; Drain ends it and books what is
// still waiting.
func TestStreamAccessLogs(t *testing.T) {
	f := newALSFixture(t, Config{})
	f.s.ledger.streamEnded(f.clock.Now()) // the fixture's stream
	stream := &fakeALSStream{ctx: t.Context(), in: make(chan *alsv3.StreamAccessLogsMessage)}
	done := make(chan error, 1)
	go func() { done <- f.s.AccessLogService().StreamAccessLogs(stream) }()

	x, id := f.forward(t)
	stream.in <- &alsv3.StreamAccessLogsMessage{Identifier: &alsv3.StreamAccessLogsMessage_Identifier{LogName: "keymux"}}
	if got := f.s.AccessLogStatus().Streams; got != 1 {
		t.Fatalf("streams %d, want 1", got)
	}
	x.finish()
	stream.in <- batch(entry(id, 503, flags(&accesslogv3.ResponseFlags{UpstreamConnectionFailure: true})))
	close(stream.in)
	if err := <-done; err != nil {
		t.Fatalf("stream ended with %v", err)
	}
	if calls := f.rec.all(); len(calls) != 1 || calls[0].Status != 503 || calls[0].ErrorCode != "server" {
		t.Fatalf("booked %+v", calls)
	}
	if st := f.s.AccessLogStatus(); st.Streams != 0 || st.Matched != 1 {
		t.Errorf("status %+v", st)
	}

	// Drain: a stream still open ends, a waiting record is booked.
	stream2 := &fakeALSStream{ctx: t.Context(), in: make(chan *alsv3.StreamAccessLogsMessage)}
	go func() { done <- f.s.AccessLogService().StreamAccessLogs(stream2) }()
	stream2.in <- &alsv3.StreamAccessLogsMessage{}
	x2, _ := f.forward(t)
	x2.finish()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := f.s.Drain(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Drain: %v, want context.Canceled (the record's entry never came)", err)
	}
	if err := <-done; err != nil {
		t.Errorf("stream ended with %v", err)
	}
	if st := f.s.AccessLogStatus(); st.Unmatched[unmatchedShutdown] != 1 || st.Pending != 0 || len(f.rec.all()) != 2 {
		t.Errorf("after Drain: %+v, %d calls", st, len(f.rec.all()))
	}
}

// TestAccessLogOverGRPC: Envoy's two streams over real gRPC: the ext_proc
// exchange of a streamed chat completion (no response body message, no
// mode override), then the access-log entry that completes its booking.
func TestAccessLogOverGRPC(t *testing.T) {
	clock := fakeclock.New(t0)
	rec := &signalRecorder{ended: make(chan telemetry.Call, 1)}
	st := benchStore(t, 1, "round_robin")
	s, err := New(Config{Store: st, Observer: rec, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	conn := loopback(t, func(srv *grpc.Server) {
		extprocv3.RegisterExternalProcessorServer(srv, s)
		alsv3.RegisterAccessLogServiceServer(srv, s.AccessLogService())
	})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()

	logs, err := alsv3.NewAccessLogServiceClient(conn).StreamAccessLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := logs.Send(&alsv3.StreamAccessLogsMessage{Identifier: &alsv3.StreamAccessLogsMessage_Identifier{LogName: "keymux"}}); err != nil {
		t.Fatal(err)
	}
	if err := pollUntil(ctx, time.Millisecond, func() bool { return s.AccessLogStatus().Streams == 1 }); err != nil {
		t.Fatalf("access-log stream not connected: %v", err)
	}

	proc, err := extprocv3.NewExternalProcessorClient(conn).Process(ctx)
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"model":"gpt-4","stream":true,"messages":[]}`)
	var callID string
	for _, m := range []*extprocv3.ProcessingRequest{
		chatHeaders(),
		{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: body, EndOfStream: true}}},
		responseHeaders("200", false),
	} {
		if err := proc.Send(m); err != nil {
			t.Fatal(err)
		}
		resp, err := proc.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetModeOverride() != nil {
			t.Errorf("mode override %v: keymux must not ask for response bodies", resp.GetModeOverride())
		}
		if md := resp.GetDynamicMetadata(); md != nil {
			callID = md.GetFields()[MetadataNamespace].GetStructValue().GetFields()[metaCallID].GetStringValue()
		}
	}
	if callID == "" {
		t.Fatal("no call_id in keymux's dynamic metadata")
	}
	if err := proc.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := proc.Recv(); err != io.EOF {
		t.Fatalf("end of the Process stream: %v", err)
	}
	if st := s.AccessLogStatus(); st.Pending != 1 {
		t.Fatalf("pending %d, want the call waiting for its entry", st.Pending)
	}

	if err := logs.Send(batch(entry(callID, 200, lastByte(3*time.Second), usageMeta(map[string]*structpb.Value{
		metaInputTokens: structpb.NewNumberValue(11), metaOutputTokens: structpb.NewNumberValue(22),
	})))); err != nil {
		t.Fatal(err)
	}
	var c telemetry.Call
	select {
	case c = <-rec.ended:
	case <-ctx.Done():
		t.Fatal("the call was not booked")
	}
	if c.Status != 200 || !c.UsageKnown || c.InputTokens != 11 || c.OutputTokens != 22 || c.End.Sub(c.Start) != 3*time.Second || c.Truncated || !c.Stream {
		t.Errorf("booked %+v", c)
	}
	want := map[string]uint64{"request_headers": 1, "request_body": 1, "request_trailers": 0,
		"response_headers": 1, "response_body": 0, "response_trailers": 0, "unknown": 0}
	for k, n := range want {
		if got := s.Messages()[k]; got != n {
			t.Errorf("messages[%s] = %d, want %d", k, got, n)
		}
	}
}

// TestUsageFromBody: by default keymux never overrides the response body
// mode, connected or not (Envoy opens its access-log stream with its first
// flush), and the call waits for its entry; with UsageFromBody it asks for
// the body (STREAMED), books at once without a stream and reads usage from
// the chunks when the entry carries none.
func TestUsageFromBody(t *testing.T) {
	sse := "data: {\"choices\":[]}\n\ndata: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n"
	for _, tc := range []struct {
		name                string
		fromBody, connected bool
		entryUsage          bool // the entry carries the usage filters' 11+22
		wantUsage           uint64
		wantNoLog           uint64
	}{
		{name: "default, no stream yet", entryUsage: true, wantUsage: 33},
		{name: "default, connected", connected: true, entryUsage: true, wantUsage: 33},
		{name: "from body, no stream", fromBody: true, wantUsage: 7, wantNoLog: 1},
		{name: "from body, connected, entry without usage", fromBody: true, connected: true, wantUsage: 7},
		{name: "from body, connected, entry with usage", fromBody: true, connected: true, entryUsage: true, wantUsage: 33},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newALSFixture(t, Config{UsageFromBody: tc.fromBody})
			if !tc.connected {
				f.s.ledger.streamEnded(f.clock.Now())
				f.clock.Advance(DefaultEntryWait)
			}
			x, id := f.forward(t)
			resp, err := x.handle(responseHeaders("200", false))
			if err != nil {
				t.Fatal(err)
			}
			if got := resp.GetModeOverride().GetResponseBodyMode(); (got == filterv3.ProcessingMode_STREAMED) != tc.fromBody {
				t.Fatalf("mode override %v", resp.GetModeOverride())
			}
			if tc.fromBody {
				if _, err := x.handle(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
					ResponseBody: &extprocv3.HttpBody{Body: []byte(sse), EndOfStream: true}}}); err != nil {
					t.Fatal(err)
				}
			}
			x.finish()
			if tc.wantNoLog == 0 {
				if n := len(f.rec.all()); n != 0 {
					t.Fatalf("booked %d before the entry", n)
				}
				var opts []entryOpt
				if tc.entryUsage {
					opts = append(opts, usageMeta(map[string]*structpb.Value{
						metaInputTokens: structpb.NewNumberValue(11), metaOutputTokens: structpb.NewNumberValue(22)}))
				}
				f.s.ledger.streamStarted()
				f.s.accessLogs(batch(entry(id, 200, opts...)))
			}
			calls := f.rec.all()
			if len(calls) != 1 || !calls[0].UsageKnown || uint64(calls[0].InputTokens+calls[0].OutputTokens) != tc.wantUsage || calls[0].Truncated {
				t.Fatalf("booked %+v", calls)
			}
			if st := f.s.AccessLogStatus(); st.Unmatched[unmatchedNoLog] != tc.wantNoLog || f.key().RT.Usage() != tc.wantUsage {
				t.Errorf("status %+v, key usage %d", st, f.key().RT.Usage())
			}
		})
	}
}

// TestLateEntryFeedsKeyHealth: with UsageFromBody and no stream connected
// (Envoy opens its stream with its first flush) the first calls are booked
// before their entries; a late
// entry still counts its upstream failure against the key, once.
func TestLateEntryFeedsKeyHealth(t *testing.T) {
	f := newALSFixture(t, Config{UsageFromBody: true})
	f.s.ledger.streamEnded(f.clock.Now())
	f.clock.Advance(DefaultEntryWait)
	x, id := f.forward(t)
	x.finish()
	if n := len(f.rec.all()); n != 1 {
		t.Fatalf("booked %d, want 1 at once", n)
	}
	f.s.ledger.streamStarted()
	e := entry(id, 503, flags(&accesslogv3.ResponseFlags{UpstreamConnectionFailure: true}))
	f.s.accessLogs(batch(e, e))
	if got := f.key().RT.State().ConsecutiveFailures; got != 1 {
		t.Errorf("consecutive failures %d, want 1", got)
	}
	if st := f.s.AccessLogStatus(); st.Dropped[dropLate] != 1 || st.Dropped[dropDuplicate] != 1 || len(f.rec.all()) != 1 {
		t.Errorf("status %+v, %d calls", st, len(f.rec.all()))
	}
}

// TestEntryForAnotherKey: an entry whose key_id is not the key keymux
// chose for the call is distrusted: dropped, the call left waiting.
func TestEntryForAnotherKey(t *testing.T) {
	f := newALSFixture(t, Config{})
	x, id := f.forward(t)
	x.finish()
	e := entry(id, 503, flags(&accesslogv3.ResponseFlags{UpstreamConnectionFailure: true}))
	e.CommonProperties.Metadata.FilterMetadata[MetadataNamespace].Fields[metaKeyID] = structpb.NewStringValue("k9")
	f.s.accessLogs(batch(e))
	if st := f.s.AccessLogStatus(); st.Dropped[dropMalformed] != 1 || st.Pending != 1 || f.key().RT.State().ConsecutiveFailures != 0 {
		t.Errorf("status %+v, key %+v", st, f.key().RT.State())
	}
}

// TestEntryUsageValues: a negative token count reads as 0 (as the body
// scanner reads it); a count keymux cannot believe (fractional, not a
// number, above 2^40) leaves the call without usage but keeps Envoy's
// account of it.
func TestEntryUsageValues(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in, out *structpb.Value
		known   bool
		wantIn  int64
		wantOut int64
	}{
		{"whole numbers", structpb.NewNumberValue(5), structpb.NewStringValue("7"), true, 5, 7},
		{"negative reads as 0", structpb.NewNumberValue(-10), structpb.NewNumberValue(3), true, 0, 3},
		{"fractional", structpb.NewNumberValue(2), structpb.NewNumberValue(1.5), false, 0, 0},
		{"not a number", structpb.NewBoolValue(true), structpb.NewNumberValue(3), false, 0, 0},
		{"above 2^40", structpb.NewNumberValue(2), structpb.NewNumberValue(1 << 41), false, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := readEntry(entry("c1", 502, usageMeta(map[string]*structpb.Value{metaInputTokens: tc.in, metaOutputTokens: tc.out})))
			if err != nil {
				t.Fatalf("readEntry: %v", err)
			}
			if r.usageKnown != tc.known || r.input != tc.wantIn || r.output != tc.wantOut || r.status != 502 || r.callID != "c1" {
				t.Errorf("record %+v", r)
			}
		})
	}
}
