package app

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// TestServeDrains: on shutdown serve reports NOT_SERVING on gRPC health
// first, then waits for the open Process stream and for its call's
// access-log entry, then ends the access-log stream and stops; /status and
// /metrics show the ext_proc messages and the access-log join.
func TestServeDrains(t *testing.T) {
	dir := t.TempDir()
	cfg, callLog := filepath.Join(dir, "keymux.yaml"), filepath.Join(dir, "calls.jsonl")
	if err := os.WriteFile(cfg, []byte("keys:\n  k1: {provider: openai, secret: sk-drain-test}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, []string{"serve", "--config", cfg, "--grpc", "127.0.0.1:0", "--admin", "127.0.0.1:0",
			"--log-level", "error", "--drain-timeout", "20s", "--call-log", callLog}, pw, io.Discard)
		pw.Close()
	}()
	sc := bufio.NewScanner(pr)
	var grpcAddr, admin string
	for grpcAddr == "" && sc.Scan() {
		if m := regexp.MustCompile(`grpc=(\S+) admin=(\S+)`).FindStringSubmatch(sc.Text()); m != nil {
			grpcAddr, admin = m[1], m[2]
		}
	}
	go io.Copy(io.Discard, pr)
	if grpcAddr == "" {
		t.Fatal("serve did not start")
	}
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	waitHealth := func(want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			r, err := hc.Check(t.Context(), &healthpb.HealthCheckRequest{})
			if err == nil && r.Status == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("gRPC health: %v %v, want %v", r, err, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitHealth(healthpb.HealthCheckResponse_SERVING)
	logs, err := alsv3.NewAccessLogServiceClient(conn).StreamAccessLogs(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := logs.Send(&alsv3.StreamAccessLogsMessage{Identifier: &alsv3.StreamAccessLogsMessage_Identifier{LogName: "keymux"}}); err != nil {
		t.Fatal(err)
	}

	// A request whose Process stream is open: headers sent, body to come.
	proc, err := extprocv3.NewExternalProcessorClient(conn).Process(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	hdr := func(k, v string) *corev3.HeaderValue { return &corev3.HeaderValue{Key: k, RawValue: []byte(v)} }
	if err := proc.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
		Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{hdr(":method", "POST"), hdr(":path", "/v1/chat/completions"), hdr(":authority", "gw")}},
	}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := proc.Recv(); err != nil {
		t.Fatal(err)
	}

	for path, want := range map[string][]string{
		"/status":  {`"access_log": {`, `"streams": 1`, `"no_log": 0`},
		"/metrics": {`keymux_extproc_messages_total{kind="request_headers"} 1`, `keymux_extproc_messages_total{kind="response_body"} 0`, "keymux_accesslog_streams 1", `keymux_accesslog_dropped_total{reason="malformed"} 0`},
	} {
		r, err := http.Get("http://" + admin + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(r.Body)
		r.Body.Close()
		for _, w := range want {
			if !strings.Contains(string(b), w) {
				t.Errorf("GET %s lacks %q", path, w)
			}
		}
	}

	cancel()
	waitHealth(healthpb.HealthCheckResponse_NOT_SERVING)
	select {
	case err := <-done:
		t.Fatalf("serve stopped (%v) while a Process stream was open", err)
	default:
	}
	body := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{
		Body: []byte(`{"model":"gpt-4o","messages":[]}`), EndOfStream: true}}}
	if err := proc.Send(body); err != nil {
		t.Fatal(err)
	}
	r, err := proc.Recv()
	if err != nil || r.GetRequestBody() == nil {
		t.Fatalf("the open request was not served during the drain: %v %v", r, err)
	}
	callID := r.GetDynamicMetadata().GetFields()["keymux"].GetStructValue().GetFields()["call_id"].GetStringValue()
	proc.CloseSend()
	if _, err := proc.Recv(); err != io.EOF {
		t.Fatalf("end of the Process stream: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("serve stopped (%v) before the call's access-log entry came", err)
	default:
	}
	// Envoy's entry: the upstream refused the connection.
	entry := &accesslogv3.HTTPAccessLogEntry{
		CommonProperties: &accesslogv3.AccessLogCommon{
			ResponseFlags: &accesslogv3.ResponseFlags{UpstreamConnectionFailure: true},
			Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
				"keymux": {Fields: map[string]*structpb.Value{"call_id": structpb.NewStringValue(callID)}}}},
		},
		Response: &accesslogv3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(503)},
	}
	if err := logs.Send(&alsv3.StreamAccessLogsMessage{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: []*accesslogv3.HTTPAccessLogEntry{entry}}}}); err != nil {
		t.Fatal(err)
	}
	// The access-log stream ends with the drain, so serve stops well
	// before GracefulStop's bound.
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve: %v", err)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("serve did not stop once the entry came")
	}
	b, err := os.ReadFile(callLog)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"status":503`) || !strings.Contains(string(b), `"error":"server"`) {
		t.Errorf("call log %s: want the call booked from the entry (503, server)", b)
	}
}
