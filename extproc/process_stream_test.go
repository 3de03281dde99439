package extproc

import (
	"errors"
	"io"
	"testing"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// How Process ends a stream: the normal ends (half-close, cancel) return
// nil, transport errors are returned wrapped, a message keymux cannot
// handle ends the stream with InvalidArgument. The Observer gets the call
// once whenever the exchange got past its first message.
func TestProcessStreamEnds(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name    string
		prepare func(st *fakeStream)
		msgs    []*extprocv3.ProcessingRequest
		err     error      // errors.Is target; nil = no error
		code    codes.Code // gRPC code of the error, when not nil and not a wrap
		replies int
		ends    int
	}{
		{name: "half-close before any message", ends: 0},
		{name: "half-close after the headers", msgs: chat("gpt-4o")[:1], replies: 1, ends: 1},
		{name: "cancelled by Envoy", msgs: chat("gpt-4o")[:1], prepare: func(st *fakeStream) { st.recvErr = status.Error(codes.Canceled, "context canceled") },
			replies: 1, ends: 1},
		{name: "context cancelled between messages", msgs: chat("gpt-4o"), prepare: func(st *fakeStream) { st.cancelAt = 1 },
			replies: 1, ends: 1},
		{name: "receive error", msgs: chat("gpt-4o")[:1], prepare: func(st *fakeStream) { st.recvErr = boom },
			err: boom, replies: 1, ends: 1},
		{name: "send cancelled", msgs: chat("gpt-4o"), prepare: func(st *fakeStream) {
			st.sendErrAt, st.sendErr = 2, status.Error(codes.Canceled, "context canceled")
		}, replies: 1, ends: 1},
		{name: "send after the peer left", msgs: chat("gpt-4o"), prepare: func(st *fakeStream) { st.sendErrAt, st.sendErr = 1, io.EOF },
			replies: 0, ends: 1},
		{name: "send error", msgs: chat("gpt-4o"), prepare: func(st *fakeStream) { st.sendErrAt, st.sendErr = 2, boom },
			err: boom, replies: 1, ends: 1},
		{name: "message of no known kind first", msgs: []*extprocv3.ProcessingRequest{{}},
			code: codes.InvalidArgument, replies: 0, ends: 0},
		{name: "message of no known kind later", msgs: append(chat("gpt-4o"), &extprocv3.ProcessingRequest{}),
			code: codes.InvalidArgument, replies: 2, ends: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, testKeys(""))
			st := newStream(t, tc.msgs...)
			if tc.prepare != nil {
				tc.prepare(st)
			}
			err := r.srv.Process(st)
			switch {
			case tc.err != nil:
				if !errors.Is(err, tc.err) {
					t.Errorf("Process = %v, want an error wrapping %v", err, tc.err)
				}
			case tc.code != codes.OK:
				if status.Code(err) != tc.code {
					t.Errorf("Process = %v, want code %v", err, tc.code)
				}
			case err != nil:
				t.Errorf("Process = %v, want nil", err)
			}
			if len(st.out) != tc.replies || len(r.obs.ends) != tc.ends {
				t.Errorf("%d replies, %d calls ended; want %d, %d", len(st.out), len(r.obs.ends), tc.replies, tc.ends)
			}
		})
	}
}

// A message keymux cannot use ends the stream with an error that names it.
func TestUnknownMessageError(t *testing.T) {
	r := newRig(t, testKeys(""))
	err := r.srv.Process(newStream(t, &extprocv3.ProcessingRequest{}))
	if want := status.Error(codes.InvalidArgument, "unsupported ext_proc message <nil>"); err == nil || err.Error() != want.Error() {
		t.Fatalf("Process = %v, want %v", err, want)
	}
}

// Request headers twice in one stream is Envoy misbehaving: a local 500.
func TestRequestHeadersTwice(t *testing.T) {
	r := newRig(t, testKeys(""))
	res := r.run(chat("gpt-4o")[0], chat("gpt-4o")[0])
	l := immediate(t, res.replies[1])
	if l.status != 500 || l.code() != "protocol_error" || l.err.Type != typeServer || l.err.Message != "keymux received request headers twice" {
		t.Fatalf("got %d %s %s %q", l.status, l.err.Type, l.code(), l.err.Message)
	}
	if res.call.ErrorCode != "protocol_error" || !res.call.Local || res.call.Status != 500 {
		t.Errorf("call %+v", res.call)
	}
}

// New refuses a config without a store and fills in the rest.
func TestNew(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("New without a store succeeded")
	}
	s, err := New(Config{Store: newTestStore(t, testKeys(""))})
	if err != nil {
		t.Fatal(err)
	}
	st := newStream(t, then(chat("gpt-4o"), []*extprocv3.ProcessingRequest{respHeaders(true, ":status", "200")})...)
	if err := s.Process(st); err != nil || len(st.out) != 3 {
		t.Fatalf("Process with the default logger, observer and clock: %v, %d replies", err, len(st.out))
	}
	if f := forwardOf(t, st.out[1]); f.metadata["key_id"] != "oai" {
		t.Errorf("forwarded to %v", f.metadata)
	}
}
