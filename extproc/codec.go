package extproc

import (
	"bytes"
	"unicode/utf8"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // registers the "proto" codec this one wraps
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// ServerCodec is the gRPC server option of keymux's ext_proc server: the
// messages Envoy sends on a Process stream are decoded by decodeRequest,
// which allocates a handful of times per message where the generic
// protobuf decoder allocates three times per header, and keymux's replies
// are encoded by marshalResponse (codec_encode.go); every other message
// (and any reply or request these do not know, the health and access-log
// services) goes through gRPC's protobuf codec unchanged.
func ServerCodec() grpc.ServerOption {
	return grpc.ForceServerCodecV2(codec{proto: encoding.GetCodecV2("proto")})
}

type codec struct{ proto encoding.CodecV2 }

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if m, ok := v.(*extprocv3.ProcessingResponse); ok {
		if data, ok := marshalResponse(m); ok {
			return data, nil
		}
	}
	return c.proto.Marshal(v)
}

func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(*extprocv3.ProcessingRequest)
	if !ok {
		return c.proto.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return unmarshalRequest(buf.ReadOnlyData(), m)
}

func (codec) Name() string { return "proto" }

// unmarshalRequest decodes b into m as proto.Unmarshal does (same result,
// same errors): decodeRequest when it knows every field of b, proto
// otherwise. m holds no memory of b afterwards.
func unmarshalRequest(b []byte, m *extprocv3.ProcessingRequest) error {
	if decodeRequest(b, m) {
		return nil
	}
	return proto.Unmarshal(b, m) // resets m first
}

// Field numbers of the messages decodeRequest reads (envoy.service.ext_proc.v3
// and envoy.config.core.v3).
const (
	fReqRequestHeaders    = 2
	fReqResponseHeaders   = 3
	fReqRequestBody       = 4
	fReqResponseBody      = 5
	fReqMetadataContext   = 8
	fReqObservabilityMode = 10
	fReqProtocolConfig    = 11

	fHeadersHeaders     = 1
	fHeadersEndOfStream = 3

	fHeaderMapHeaders = 1

	fHeaderKey      = 1
	fHeaderValue    = 2
	fHeaderRawValue = 3

	fBodyBody                      = 1
	fBodyEndOfStream               = 2
	fBodyEndOfStreamWithoutMessage = 3
	fBodyGrpcMessageCompressed     = 4
	fBodyDrainComplete             = 5
)

// decodeRequest decodes the messages Envoy sends on the request path —
// headers or a body, with the protocol configuration and the metadata
// context — into m, with the same result as proto.Unmarshal. It reports
// false, leaving m to be reset, for anything else: another field, a field
// given twice where protobuf would merge, a wire type protobuf would keep
// as an unknown field, invalid UTF-8 in a string, malformed bytes.
//
// The strings and byte values of a headers message are slices of one copy
// of b, so a message of n headers costs a few allocations instead of 3n.
func decodeRequest(b []byte, m *extprocv3.ProcessingRequest) bool {
	var (
		raw   []byte // a copy of b, made when a header needs it
		strs  string // raw as a string (the header keys and values)
		seen  uint16 // the fields met, by number (all below 16)
		oneof bool
	)
	copies := func() {
		if raw == nil && len(b) > 0 {
			raw = bytes.Clone(b)
			// The strings are read from the same copy: nothing writes to
			// it but through a raw value, and each raw value is capped at
			// its own bytes, which no string covers.
			strs = unsafe.String(&raw[0], len(raw))
		}
	}
	for off := 0; off < len(b); {
		num, typ, n := protowire.ConsumeTag(b[off:])
		if n < 0 || num >= 16 {
			return false
		}
		if seen&(1<<num) != 0 {
			return false // a message field twice: protobuf merges
		}
		seen |= 1 << num
		off += n
		switch num {
		case fReqObservabilityMode:
			if typ != protowire.VarintType {
				return false
			}
			v, n := protowire.ConsumeVarint(b[off:])
			if n < 0 {
				return false
			}
			off += n
			m.ObservabilityMode = protowire.DecodeBool(v)
			continue
		}
		if typ != protowire.BytesType {
			return false
		}
		v, n := protowire.ConsumeBytes(b[off:])
		if n < 0 {
			return false
		}
		start := off + n - len(v)
		off += n
		switch num {
		case fReqRequestHeaders, fReqResponseHeaders:
			if oneof {
				return false
			}
			oneof = true
			copies()
			h, ok := decodeHeaders(v, raw[start:start+len(v)], strs[start:start+len(v)])
			if !ok {
				return false
			}
			if num == fReqRequestHeaders {
				m.Request = &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: h}
			} else {
				m.Request = &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: h}
			}
		case fReqRequestBody, fReqResponseBody:
			if oneof {
				return false
			}
			oneof = true
			body, ok := decodeBody(v)
			if !ok {
				return false
			}
			if num == fReqRequestBody {
				m.Request = &extprocv3.ProcessingRequest_RequestBody{RequestBody: body}
			} else {
				m.Request = &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: body}
			}
		case fReqMetadataContext:
			// Decoded one level down: the recursion limit counts from
			// the top message, as proto.Unmarshal's would.
			md := new(corev3.Metadata)
			if (proto.UnmarshalOptions{RecursionLimit: protowire.DefaultRecursionLimit - 1}).Unmarshal(v, md) != nil {
				return false
			}
			m.MetadataContext = md
		case fReqProtocolConfig:
			pc := new(extprocv3.ProtocolConfiguration)
			if (proto.UnmarshalOptions{RecursionLimit: protowire.DefaultRecursionLimit - 1}).Unmarshal(v, pc) != nil {
				return false
			}
			m.ProtocolConfig = pc
		default:
			return false
		}
	}
	return true
}

// decodeHeaders decodes an HttpHeaders message b; raw and strs are copies
// of b (the values and the keys are slices of them).
func decodeHeaders(b, raw []byte, strs string) (*extprocv3.HttpHeaders, bool) {
	h := new(extprocv3.HttpHeaders)
	seen := false
	for off := 0; off < len(b); {
		num, typ, n := protowire.ConsumeTag(b[off:])
		if n < 0 {
			return nil, false
		}
		off += n
		switch {
		case num == fHeadersEndOfStream && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b[off:])
			if n < 0 {
				return nil, false
			}
			off += n
			h.EndOfStream = protowire.DecodeBool(v)
		case num == fHeadersHeaders && typ == protowire.BytesType && !seen:
			seen = true
			v, n := protowire.ConsumeBytes(b[off:])
			if n < 0 {
				return nil, false
			}
			start := off + n - len(v)
			off += n
			hm, ok := decodeHeaderMap(v, raw[start:start+len(v)], strs[start:start+len(v)])
			if !ok {
				return nil, false
			}
			h.Headers = hm
		default:
			return nil, false
		}
	}
	return h, true
}

// decodeHeaderMap decodes a HeaderMap message b into one array of
// HeaderValues.
func decodeHeaderMap(b, raw []byte, strs string) (*corev3.HeaderMap, bool) {
	count := 0
	for off := 0; off < len(b); {
		num, typ, n := protowire.ConsumeTag(b[off:])
		if n < 0 || num != fHeaderMapHeaders || typ != protowire.BytesType {
			return nil, false
		}
		off += n
		n = protowire.ConsumeFieldValue(num, typ, b[off:])
		if n < 0 {
			return nil, false
		}
		off += n
		count++
	}
	hm := new(corev3.HeaderMap)
	if count == 0 {
		return hm, true
	}
	vals := make([]corev3.HeaderValue, count)
	hm.Headers = make([]*corev3.HeaderValue, count)
	i := 0
	for off := 0; off < len(b); i++ {
		_, _, n := protowire.ConsumeTag(b[off:])
		off += n
		v, n := protowire.ConsumeBytes(b[off:])
		start := off + n - len(v)
		off += n
		if !decodeHeaderValue(&vals[i], v, raw[start:start+len(v)], strs[start:start+len(v)]) {
			return nil, false
		}
		hm.Headers[i] = &vals[i]
	}
	return hm, true
}

// decodeHeaderValue decodes a HeaderValue message b into hv.
func decodeHeaderValue(hv *corev3.HeaderValue, b, raw []byte, strs string) bool {
	for off := 0; off < len(b); {
		num, typ, n := protowire.ConsumeTag(b[off:])
		if n < 0 || typ != protowire.BytesType {
			return false
		}
		off += n
		v, n := protowire.ConsumeBytes(b[off:])
		if n < 0 {
			return false
		}
		start, end := off+n-len(v), off+n
		off = end
		switch num {
		case fHeaderKey, fHeaderValue:
			if !utf8.Valid(v) {
				return false // proto3 strings: proto.Unmarshal refuses the message
			}
			if num == fHeaderKey {
				hv.Key = strs[start:end]
			} else {
				hv.Value = strs[start:end]
			}
		case fHeaderRawValue:
			hv.RawValue = nil // as protobuf leaves an empty one
			if end > start {
				hv.RawValue = raw[start:end:end]
			}
		default:
			return false
		}
	}
	return true
}

// decodeBody decodes an HttpBody message b; the body is a copy.
func decodeBody(b []byte) (*extprocv3.HttpBody, bool) {
	body := new(extprocv3.HttpBody)
	for off := 0; off < len(b); {
		num, typ, n := protowire.ConsumeTag(b[off:])
		if n < 0 {
			return nil, false
		}
		off += n
		if num == fBodyBody && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b[off:])
			if n < 0 {
				return nil, false
			}
			off += n
			body.Body = append([]byte(nil), v...)
			continue
		}
		if typ != protowire.VarintType {
			return nil, false
		}
		v, n := protowire.ConsumeVarint(b[off:])
		if n < 0 {
			return nil, false
		}
		off += n
		switch num {
		case fBodyEndOfStream:
			body.EndOfStream = protowire.DecodeBool(v)
		case fBodyEndOfStreamWithoutMessage:
			body.EndOfStreamWithoutMessage = protowire.DecodeBool(v)
		case fBodyGrpcMessageCompressed:
			body.GrpcMessageCompressed = protowire.DecodeBool(v)
		case fBodyDrainComplete:
			body.DrainComplete = protowire.DecodeBool(v)
		default:
			return nil, false
		}
	}
	return body, true
}
