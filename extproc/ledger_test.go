package extproc

import (
	"bytes"
	"runtime"
	"strings"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/keymux/keymux/telemetry"
)

// collected returns a channel closed once x has been garbage collected.
func collected(x *exchange) <-chan struct{} {
	gone := make(chan struct{})
	runtime.AddCleanup(x, func(c chan struct{}) { close(c) }, gone)
	return gone
}

// waitCollected runs the collector until gone is closed; it fails the test
// when the object is still reachable after several cycles.
func waitCollected(t *testing.T, gone <-chan struct{}, what string) {
	t.Helper()
	for range 50 {
		runtime.GC()
		select {
		case <-gone:
			return
		case <-time.After(20 * time.Millisecond): // the cleanup runs on its own goroutine
		}
	}
	t.Fatalf("%s: the exchange is still reachable after its stream ended", what)
}

// forwardAndEnd runs a chat request through an exchange and ends its
// stream; it returns the call id (a copy: the reply's is the exchange's
// memory) and a channel closed once the exchange is collected.
func (f *alsFixture) forwardAndEnd(t *testing.T) (string, <-chan struct{}) {
	t.Helper()
	x, id := f.forward(t)
	x.finish()
	return strings.Clone(id), collected(x)
}

// TestLedgerReleasesExchange: once its stream ended, the ledger keeps a
// forwarded call's record without its exchange, both while the record
// waits for its entry and after it was booked without it; the entry,
// early or late, is applied exactly as before.
func TestLedgerReleasesExchange(t *testing.T) {
	uf := flags(&accesslogv3.ResponseFlags{UpstreamConnectionFailure: true})

	t.Run("waiting for its entry", func(t *testing.T) {
		f := newALSFixture(t, Config{})
		id, gone := f.forwardAndEnd(t)
		waitCollected(t, gone, "pending")
		if st := f.s.AccessLogStatus(); st.Pending != 1 || len(f.rec.all()) != 0 {
			t.Fatalf("status %+v, %d calls booked", st, len(f.rec.all()))
		}
		f.s.accessLogs(batch(entry(id, 503, uf, lastByte(time.Second))))
		calls := f.rec.all()
		if len(calls) != 1 || calls[0].Status != 503 || calls[0].ErrorCode != "server" || calls[0].KeyID != "k0" ||
			calls[0].ModelOriginal != "gpt-4" || calls[0].RequestID != "r1" || calls[0].End.Sub(calls[0].Start) != time.Second {
			t.Fatalf("booked %+v", calls)
		}
		if got := f.key().RT.State().ConsecutiveFailures; got != 1 {
			t.Errorf("consecutive failures %d, want 1", got)
		}
		if st := f.s.AccessLogStatus(); st.Matched != 1 || st.Pending != 0 {
			t.Errorf("status %+v", st)
		}
	})

	t.Run("booked without it, the entry late", func(t *testing.T) {
		f := newALSFixture(t, Config{})
		id, gone := f.forwardAndEnd(t)
		f.clock.Advance(DefaultEntryWait)
		f.s.ledger.sweep(f.clock.Now())
		waitCollected(t, gone, "booked")
		if calls := f.rec.all(); len(calls) != 1 || calls[0].ErrorCode != "stream_cut" || calls[0].KeyID != "k0" {
			t.Fatalf("booked %+v", calls)
		}
		e := entry(id, 503, uf)
		f.s.accessLogs(batch(e, e))
		if got := f.key().RT.State().ConsecutiveFailures; got != 1 {
			t.Errorf("consecutive failures %d, want 1", got)
		}
		st := f.s.AccessLogStatus()
		if st.Dropped[dropLate] != 1 || st.Dropped[dropDuplicate] != 1 || st.Unmatched[unmatchedTimeout] != 1 || len(f.rec.all()) != 1 {
			t.Errorf("status %+v, %d calls", st, len(f.rec.all()))
		}
	})
}

// TestHeldRecordSize: what the ledger keeps per forwarded call waiting for
// its entry (a 1 KB chat request with the SDKs' headers): the record, its
// call id and its table slot, well under the exchange's 2.9 KB.
func TestHeldRecordSize(t *testing.T) {
	const n, limit = 2000, 1024
	s, err := New(Config{Store: benchStore(t, 1, "round_robin"), Observer: telemetry.Nop{}})
	if err != nil {
		t.Fatal(err)
	}
	hdrs, body := chatRequest(append([]byte(`{"model":"gpt-4","messages":[{"role":"user","content":"`), append(bytes.Repeat([]byte("a"), 960), `"}]}`...)...))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range n {
		x := newExchange(s)
		for _, m := range []*extprocv3.ProcessingRequest{hdrs, body} {
			if _, err := x.handle(m); err != nil {
				t.Fatal(err)
			}
		}
		x.releaseReplies()
		x.finish()
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if st := s.AccessLogStatus(); st.Pending != n {
		t.Fatalf("pending %d, want %d", st.Pending, n)
	}
	per := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / n
	t.Logf("%d bytes held per call waiting for its entry", per)
	if per > limit {
		t.Errorf("%d bytes held per call waiting for its entry, want <= %d", per, limit)
	}
}

// TestLedgerDistrustsEarlyEntry: an entry that came before its call's
// stream ended and names a key keymux did not put on the call is
// distrusted as one that comes after it is: dropped as malformed, the
// record waits for its entry and its key is not fed.
func TestLedgerDistrustsEarlyEntry(t *testing.T) {
	f := newALSFixture(t, Config{})
	x, id := f.forward(t)
	id = strings.Clone(id)
	other := func(e *accesslogv3.HTTPAccessLogEntry) {
		e.CommonProperties.Metadata.FilterMetadata[MetadataNamespace].Fields[metaKeyID] = structpb.NewStringValue("k9")
	}
	f.s.accessLogs(batch(entry(id, 503, other, flags(&accesslogv3.ResponseFlags{UpstreamConnectionFailure: true}))))
	x.finish()
	st := f.s.AccessLogStatus()
	if st.Dropped[dropMalformed] != 1 || st.Matched != 0 || st.Pending != 1 || len(f.rec.all()) != 0 {
		t.Fatalf("status %+v, booked %+v", st, f.rec.all())
	}
	if got := f.key().RT.State().ConsecutiveFailures; got != 0 {
		t.Errorf("consecutive failures %d, want 0", got)
	}
	f.s.accessLogs(batch(entry(id, 200)))
	if calls := f.rec.all(); len(calls) != 1 || calls[0].Status != 200 || calls[0].KeyID != "k0" {
		t.Errorf("booked %+v", calls)
	}
}
