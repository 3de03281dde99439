package extproc

import (
	"bytes"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/grpc/encoding"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func codecHeaders(kv ...string) *extprocv3.HttpHeaders {
	hm := &corev3.HeaderMap{}
	for i := 0; i+1 < len(kv); i += 2 {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: kv[i], RawValue: []byte(kv[i+1])})
	}
	return &extprocv3.HttpHeaders{Headers: hm}
}

// codecRequestHeaders is a chat completion's request headers as Envoy
// sends them (the official SDK's headers), with the stream's protocol
// configuration and forwarded metadata.
func codecRequestHeaders() *extprocv3.ProcessingRequest {
	h := codecHeaders(":authority", "gateway.local:10000", ":path", "/v1/chat/completions", ":method", "POST",
		":scheme", "http", "authorization", "Bearer km-token", "content-type", "application/json",
		"content-length", "1024", "x-request-id", "7f1c2a9e-3b4d-4e5f-8a6b-0c1d2e3f4a5b",
		"user-agent", "OpenAI/Python 1.82.0", "accept", "application/json", "x-stainless-lang", "python",
		"x-stainless-package-version", "1.82.0", "x-stainless-os", "Linux", "x-stainless-arch", "x64",
		"x-stainless-runtime", "CPython", "x-stainless-runtime-version", "3.12.3", "x-stainless-async", "false",
		"x-stainless-retry-count", "0", "x-stainless-read-timeout", "600", "x-forwarded-proto", "http",
		"x-empty", "")
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: h}}
}

func codecCases() map[string]*extprocv3.ProcessingRequest {
	first := codecRequestHeaders()
	first.ProtocolConfig = &extprocv3.ProtocolConfiguration{RequestBodyMode: filterv3.ProcessingMode_BUFFERED, ResponseBodyMode: filterv3.ProcessingMode_NONE}
	claims, _ := structpb.NewStruct(map[string]any{"sub": "alice", "groups": []any{"a", "b"}})
	first.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"envoy.filters.http.jwt_authn": claims}}
	eos := codecHeaders(":status", "200", "content-type", "application/json")
	eos.EndOfStream = true
	strValue := codecHeaders()
	strValue.Headers.Headers = []*corev3.HeaderValue{{Key: "x-a", Value: "v"}, {Key: "x-b", Value: "w", RawValue: []byte("raw")}}
	return map[string]*extprocv3.ProcessingRequest{
		"request headers":                    codecRequestHeaders(),
		"first message: config and metadata": first,
		"response headers, end of stream":    {Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: eos}},
		"headers with value instead of raw":  {Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: strValue}},
		"no headers":                         {Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{}}},
		"empty header map":                   {Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{}}}},
		"request body": {Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{
			Body: []byte(`{"model":"gpt-4","messages":[]}`), EndOfStream: true}}},
		"response body, every flag": {Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: &extprocv3.HttpBody{
			Body: []byte("data: x\n\n"), EndOfStream: true, EndOfStreamWithoutMessage: true, GrpcMessageCompressed: true, DrainComplete: true}}},
		"empty body":         {Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{EndOfStream: true}}},
		"observability mode": {Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{}}, ObservabilityMode: true},
		"empty message":      {},
	}
}

// checkDecode decodes b with unmarshalRequest and with proto.Unmarshal
// and fails unless both agree (error or message), and unless the decoded
// message still holds after b is overwritten (it must not share b).
func checkDecode(t *testing.T, b []byte) {
	t.Helper()
	want := new(extprocv3.ProcessingRequest)
	wantErr := proto.Unmarshal(b, want)
	got := new(extprocv3.ProcessingRequest)
	in := bytes.Clone(b)
	gotErr := unmarshalRequest(in, got)
	if (wantErr == nil) != (gotErr == nil) || (wantErr != nil && wantErr.Error() != gotErr.Error()) {
		t.Fatalf("error %v, proto.Unmarshal's %v (input %x)", gotErr, wantErr, b)
	}
	if wantErr != nil {
		return
	}
	for i := range in {
		in[i] = 0xff
	}
	if !proto.Equal(got, want) {
		t.Fatalf("decoded\n%v\nproto.Unmarshal\n%v\n(input %x)", got, want, b)
	}
}

func TestDecodeRequestFastPath(t *testing.T) {
	for name, m := range codecCases() {
		t.Run(name, func(t *testing.T) {
			b, err := proto.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			if !decodeRequest(b, new(extprocv3.ProcessingRequest)) {
				t.Fatal("decodeRequest left the message to proto.Unmarshal")
			}
			checkDecode(t, b)
		})
	}
}

func TestDecodeRequestLeavesTheRestToProto(t *testing.T) {
	marshal := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	headers := marshal(codecRequestHeaders())
	body := marshal(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: []byte("x")}}})
	attrs := codecRequestHeaders()
	attrs.Attributes = map[string]*structpb.Struct{"envoy.filters.http.ext_proc": {}}
	tag := func(num protowire.Number, typ protowire.Type) []byte { return protowire.AppendTag(nil, num, typ) }
	// a request headers message of one header whose field num holds s
	// (proto.Marshal refuses invalid UTF-8)
	headerWith := func(num protowire.Number, s string) []byte {
		hv := protowire.AppendString(tag(num, protowire.BytesType), s)
		hm := protowire.AppendBytes(tag(fHeaderMapHeaders, protowire.BytesType), hv)
		h := protowire.AppendBytes(tag(fHeadersHeaders, protowire.BytesType), hm)
		return protowire.AppendBytes(tag(fReqRequestHeaders, protowire.BytesType), h)
	}
	cases := map[string][]byte{
		"attributes":                    marshal(attrs),
		"request trailers":              marshal(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: &extprocv3.HttpTrailers{}}}),
		"headers twice (merged)":        append(bytes.Clone(headers), headers...),
		"headers then body (last wins)": append(bytes.Clone(headers), body...),
		"invalid UTF-8 key":             headerWith(fHeaderKey, "x-\xff"),
		"invalid UTF-8 value":           headerWith(fHeaderValue, "\xc0"),
		"unknown field":                 protowire.AppendVarint(tag(99, protowire.VarintType), 1),
		"wrong wire type":               protowire.AppendVarint(tag(fReqRequestHeaders, protowire.VarintType), 1),
		"truncated":                     headers[:len(headers)-3],
		"field number zero":             {0x00},
		"end group without start":       tag(fReqRequestBody, protowire.EndGroupType),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			if decodeRequest(b, new(extprocv3.ProcessingRequest)) {
				t.Fatal("decodeRequest decoded a message it must leave to proto.Unmarshal")
			}
			checkDecode(t, b)
		})
	}
}

// TestDecodeRequestAllocations pins the point of the fast path: a request
// headers message of n headers costs a constant few allocations.
func TestDecodeRequestAllocations(t *testing.T) {
	b, err := proto.Marshal(codecRequestHeaders())
	if err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if err := unmarshalRequest(b, new(extprocv3.ProcessingRequest)); err != nil {
			t.Fatal(err)
		}
	})
	// The message, its oneof wrapper, HttpHeaders, HeaderMap, the
	// HeaderValue array and its pointers, the copy of the bytes.
	if allocs != 7 {
		t.Fatalf("%v allocations per request headers message, want 7", allocs)
	}
}

func TestCodecOtherMessages(t *testing.T) {
	c := codec{proto: encoding.GetCodecV2("proto")}
	b, err := c.Marshal(&healthpb.HealthCheckRequest{Service: "keymux"})
	if err != nil {
		t.Fatal(err)
	}
	var got healthpb.HealthCheckRequest
	if err := c.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.GetService() != "keymux" {
		t.Fatalf("service %q, want keymux", got.GetService())
	}
	req, err := proto.Marshal(codecRequestHeaders())
	if err != nil {
		t.Fatal(err)
	}
	var m extprocv3.ProcessingRequest
	if err := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(req)}, &m); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&m, codecRequestHeaders()) {
		t.Fatalf("decoded %v", &m)
	}
	if c.Name() != "proto" {
		t.Fatalf("name %q: Envoy sends application/grpc (the proto codec)", c.Name())
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, m := range codecCases() {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(strings.Repeat("\x12\x00", 3)))
	f.Fuzz(func(t *testing.T, b []byte) {
		checkDecode(t, b)
	})
}

// codecReplies are replies of every shape keymux sends, and a few it
// does not (marshalResponse leaves those to proto).
func codecReplies() map[string]*extprocv3.ProcessingResponse {
	md, _ := structpb.NewStruct(map[string]any{MetadataNamespace: map[string]any{
		metaCallID: "c-1", metaKeyID: "k0", "model_original": "gpt-4", "model_final": "gpt-4o-mini", "client_id": "load",
		"n": 1.5, "null": nil, "ok": true, "off": false, "empty": "", "": "empty key", "nested": map[string]any{"a": "b"},
	}, "second": map[string]any{}})
	mut := &extprocv3.HeaderMutation{
		SetHeaders: []*corev3.HeaderValueOption{
			{Header: &corev3.HeaderValue{Key: "authorization", RawValue: []byte("Bearer sk-x")}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD},
			{Header: &corev3.HeaderValue{Key: "x-a", Value: "v"}, Append: &wrapperspb.BoolValue{Value: false}, KeepEmptyValue: true},
			{Header: &corev3.HeaderValue{Key: "x-b"}, Append: &wrapperspb.BoolValue{Value: true}},
			{},
		},
		RemoveHeaders: []string{"x-api-key", "anthropic-api-key"},
	}
	big := bytes.Repeat([]byte("x"), 40<<10)
	return map[string]*extprocv3.ProcessingResponse{
		"forwarding headers reply": {Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
			Response: &extprocv3.CommonResponse{HeaderMutation: mut, ClearRouteCache: true}}}, DynamicMetadata: md},
		"body reply with a new body": {Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{
			Response: &extprocv3.CommonResponse{Status: extprocv3.CommonResponse_CONTINUE_AND_REPLACE, HeaderMutation: mut,
				BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: []byte(`{"model":"gpt-4o-mini"}`)}}}}},
			DynamicMetadata: md},
		"large body (pooled buffer)": {Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{
			Response: &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: big}}}}}},
		"empty body mutation": {Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{
			Response: &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{}}}}}},
		"clear body false": {Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{
			Response: &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_ClearBody{}}}}}},
		"response headers with mode override": {Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}},
			ModeOverride: &filterv3.ProcessingMode{ResponseBodyMode: filterv3.ProcessingMode_STREAMED, RequestHeaderMode: filterv3.ProcessingMode_SKIP}},
		"empty request headers reply": {Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}},
		"empty common response":       {Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{Response: &extprocv3.CommonResponse{}}}},
		"empty reply":                 {},
		"negative enum":               {ModeOverride: &filterv3.ProcessingMode{RequestBodyMode: -1}},
	}
}

func TestMarshalResponseMatchesProto(t *testing.T) {
	c := codec{proto: encoding.GetCodecV2("proto")}
	for name, m := range codecReplies() {
		t.Run(name, func(t *testing.T) {
			if _, ok := marshalResponse(m); !ok {
				t.Fatal("marshalResponse left the reply to proto")
			}
			checkEncode(t, c, m)
		})
	}
}

// checkEncode fails unless the codec writes m as proto's deterministic
// output does (or fails as proto does). A reply left to proto (whose
// order of map entries varies) must read back as m.
func checkEncode(t *testing.T, c codec, m *extprocv3.ProcessingResponse) {
	t.Helper()
	want, wantErr := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	_, fast := marshalResponse(m)
	data, err := c.Marshal(m)
	if (err == nil) != (wantErr == nil) {
		t.Fatalf("error %v, proto's %v", err, wantErr)
	}
	if err != nil {
		return
	}
	got := data.Materialize()
	data.Free()
	if !fast {
		back := new(extprocv3.ProcessingResponse)
		if err := proto.Unmarshal(got, back); err != nil {
			t.Fatal(err)
		}
		if again, _ := (proto.MarshalOptions{Deterministic: true}).Marshal(back); !bytes.Equal(again, want) {
			t.Fatalf("proto's bytes %x read back as %v", got, back)
		}
		return
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("wrote\n%x\nproto writes\n%x", got, want)
	}
}

func TestMarshalResponseLeavesTheRestToProto(t *testing.T) {
	c := codec{proto: encoding.GetCodecV2("proto")}
	list, _ := structpb.NewList([]any{"a"})
	cases := map[string]*extprocv3.ProcessingResponse{
		"immediate response": {Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: &extprocv3.ImmediateResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode_TooManyRequests}, Body: []byte(`{"error":{}}`)}}},
		"trailers reply":         {Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}},
		"common trailers":        {Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{Response: &extprocv3.CommonResponse{Trailers: &corev3.HeaderMap{}}}}},
		"message timeout":        {OverrideMessageTimeout: durationpb.New(time.Second)},
		"request drain":          {RequestDrain: true},
		"typed metadata":         {TypedDynamicMetadata: map[string]*anypb.Any{"x": {}}},
		"list value":             {DynamicMetadata: &structpb.Struct{Fields: map[string]*structpb.Value{"l": structpb.NewListValue(list)}}},
		"nil map value":          {DynamicMetadata: &structpb.Struct{Fields: map[string]*structpb.Value{"n": nil}}},
		"nil header option":      {Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{nil}}}}}},
		"invalid UTF-8 key":      {Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "\xff"}}}}}}}},
		"invalid UTF-8 removal":  {Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{RemoveHeaders: []string{"\xc0"}}}}}},
		"invalid UTF-8 metadata": {DynamicMetadata: &structpb.Struct{Fields: map[string]*structpb.Value{"k": structpb.NewStringValue("\xff")}}},
	}
	for name, m := range cases {
		t.Run(name, func(t *testing.T) {
			if _, ok := marshalResponse(m); ok {
				t.Fatal("marshalResponse wrote a reply it must leave to proto")
			}
			checkEncode(t, c, m)
		})
	}
}

// TestMarshalResponseAllocations pins the point of the encoder: a
// forwarding reply with its dynamic metadata costs its buffer and the
// slice that carries it, whatever the metadata holds.
func TestMarshalResponseAllocations(t *testing.T) {
	m := codecReplies()["forwarding headers reply"]
	allocs := testing.AllocsPerRun(100, func() {
		if _, ok := marshalResponse(m); !ok {
			t.Fatal("left to proto")
		}
	})
	if allocs != 3 {
		t.Fatalf("%v allocations per reply, want 3 (the bytes, the buffer, the slice)", allocs)
	}
}

// TestEncodeResponseKnowsEveryField fails when a message marshalResponse
// writes gains a field (a go-control-plane upgrade): the encoder would
// silently drop it. Each list is the fields it writes or refuses.
func TestEncodeResponseKnowsEveryField(t *testing.T) {
	known := map[proto.Message][]protowire.Number{
		&extprocv3.ProcessingResponse{}: {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		&extprocv3.HeadersResponse{}:    {1},
		&extprocv3.BodyResponse{}:       {1},
		&extprocv3.CommonResponse{}:     {1, 2, 3, 4, 5},
		&extprocv3.HeaderMutation{}:     {1, 2},
		&corev3.HeaderValueOption{}:     {1, 2, 3, 4},
		&corev3.HeaderValue{}:           {1, 2, 3},
		&extprocv3.BodyMutation{}:       {1, 2, 3},
		&filterv3.ProcessingMode{}:      {1, 2, 3, 4, 5, 6},
		&structpb.Struct{}:              {1},
		&structpb.Value{}:               {1, 2, 3, 4, 5, 6},
		&wrapperspb.BoolValue{}:         {1},
	}
	for m, nums := range known {
		fields := m.ProtoReflect().Descriptor().Fields()
		var got []protowire.Number
		for i := range fields.Len() {
			got = append(got, fields.Get(i).Number())
		}
		slices.Sort(got)
		if !slices.Equal(got, nums) {
			t.Errorf("%s has fields %v, the encoder knows %v", m.ProtoReflect().Descriptor().FullName(), got, nums)
		}
	}
}

func FuzzMarshalResponse(f *testing.F) {
	for _, m := range codecReplies() {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	c := codec{proto: encoding.GetCodecV2("proto")}
	f.Fuzz(func(t *testing.T, b []byte) {
		m := new(extprocv3.ProcessingResponse)
		if (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, m) != nil {
			return
		}
		checkEncode(t, c, m)
	})
}

// TestCodecOnMutatedMessages runs both directions' oracles (as the fuzz
// targets do) on a fixed series of mutations of the seeds: bytes changed,
// cut and spliced.
func TestCodecOnMutatedMessages(t *testing.T) {
	var seeds [][]byte
	for _, m := range codecCases() {
		b, _ := proto.Marshal(m)
		seeds = append(seeds, b)
	}
	for _, m := range codecReplies() {
		if b, _ := proto.Marshal(m); len(b) < 4096 {
			seeds = append(seeds, b)
		}
	}
	c := codec{proto: encoding.GetCodecV2("proto")}
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		b := bytes.Clone(seeds[r.IntN(len(seeds))])
		for range 1 + r.IntN(4) {
			switch r.IntN(3) {
			case 0:
				if len(b) > 0 {
					b[r.IntN(len(b))] = byte(r.IntN(256))
				}
			case 1:
				b = b[:r.IntN(len(b)+1)]
			case 2:
				o := seeds[r.IntN(len(seeds))]
				b = append(b, o[:r.IntN(len(o)+1)]...)
			}
		}
		checkDecode(t, b)
		m := new(extprocv3.ProcessingResponse)
		if (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, m) == nil {
			checkEncode(t, c, m)
		}
	}
}

// BenchmarkCodec compares the codec with gRPC's protobuf codec on the
// messages of one request: Envoy's request headers (decode) and keymux's
// forwarding reply with its dynamic metadata (encode).
func BenchmarkCodec(b *testing.B) {
	hdrs, err := proto.Marshal(codecRequestHeaders())
	if err != nil {
		b.Fatal(err)
	}
	reply := codecReplies()["forwarding headers reply"]
	for _, c := range []struct {
		name  string
		codec encoding.CodecV2
	}{{"proto", encoding.GetCodecV2("proto")}, {"keymux", codec{proto: encoding.GetCodecV2("proto")}}} {
		b.Run("decode-headers/"+c.name, func(b *testing.B) {
			b.ReportAllocs()
			cpu0 := cpuTime()
			defer func() { b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op") }()
			for b.Loop() {
				if err := c.codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(hdrs)}, new(extprocv3.ProcessingRequest)); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("encode-reply/"+c.name, func(b *testing.B) {
			b.ReportAllocs()
			cpu0 := cpuTime()
			defer func() { b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op") }()
			for b.Loop() {
				data, err := c.codec.Marshal(reply)
				if err != nil {
					b.Fatal(err)
				}
				data.Free()
			}
		})
	}
}
