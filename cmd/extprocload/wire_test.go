package main

import (
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

func mustStruct(t *testing.T, m map[string]any) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestMetadataBytesMergeAsEnvoy: the replies' dynamic metadata, forwarded
// as bytes, reaches the access-log entry as Envoy's merge of the
// namespaces (a namespace set again keeps its other fields), beside the
// entry's own namespaces.
func TestMetadataBytesMergeAsEnvoy(t *testing.T) {
	replies := []map[string]any{
		{"keymux": map[string]any{"call_id": "c-1", "model": "gpt-4"}},
		{"keymux": map[string]any{"key_id": "k1", "model": "gpt-4o"}, "other": map[string]any{"a": true}, "scalar": "dropped"},
		{},
	}
	want := map[string]map[string]any{
		"keymux":       {"call_id": "c-1", "key_id": "k1", "model": "gpt-4o"},
		"other":        {"a": true},
		"keymux.usage": {"prompt_tokens": 3.0},
	}
	var md metadataBytes
	for i, r := range replies {
		b, err := proto.Marshal(&extprocv3.ProcessingResponse{
			Response:        &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}},
			DynamicMetadata: mustStruct(t, r),
		})
		if err != nil {
			t.Fatal(err)
		}
		dm, err := readReply(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{}}, b)
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		if err := md.add(dm); err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
	}
	entry := &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"keymux.usage": mustStruct(t, map[string]any{"prompt_tokens": 3})}}
	md.appendTo(entry)
	b, err := proto.Marshal(entry)
	if err != nil {
		t.Fatal(err)
	}
	var got corev3.Metadata
	if err := proto.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if len(got.GetFilterMetadata()) != len(want) {
		t.Fatalf("namespaces %v, want %v", got.GetFilterMetadata(), want)
	}
	for ns, fields := range want {
		if g := got.GetFilterMetadata()[ns]; !proto.Equal(g, mustStruct(t, fields)) {
			t.Errorf("namespace %q = %v, want %v", ns, g, fields)
		}
	}
}

func TestReadReplyKinds(t *testing.T) {
	headers := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{}}
	cases := []struct {
		name  string
		reply *extprocv3.ProcessingResponse
		err   string
	}{
		{"its kind", &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}}, ""},
		{"another kind", &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}},
			"reply to RequestHeaders: got *ext_procv3.ProcessingResponse_RequestBody"},
		{"immediate response", &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode_Unauthorized}, Body: []byte("no key")}}},
			"reply to RequestHeaders: immediate response 401: no key"},
		{"no reply", &extprocv3.ProcessingResponse{}, "reply to RequestHeaders: got <nil>"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := proto.Marshal(tc.reply)
			if err != nil {
				t.Fatal(err)
			}
			_, err = readReply(headers, b)
			if got := errString(err); got != tc.err {
				t.Fatalf("readReply: %q, want %q", got, tc.err)
			}
		})
	}
	if _, err := readReply(headers, []byte{0x0a, 0x05}); err == nil || !strings.HasPrefix(err.Error(), "reply to RequestHeaders: ") {
		t.Fatalf("truncated reply: %v", err)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
