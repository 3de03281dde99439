package extproc

import (
	"math"
	"slices"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/structpb"
)

// marshalResponse encodes the replies keymux sends on a Process stream —
// headers and body replies (common response, header and body mutations),
// dynamic metadata, a mode override — byte for byte as
// proto.MarshalOptions{Deterministic: true} does, without protobuf's
// reflection (which allocates for every key of the metadata's maps, once
// to size them and once to write them). It reports false for any other
// reply, which then goes through proto: another field set, a message or
// value kind it does not write, invalid UTF-8 in a string (proto refuses
// it).
//
// The messages keymux builds carry no unknown fields; a field added to
// one of these messages by a newer go-control-plane fails
// TestEncodeResponseKnowsEveryField until it is handled here.
func marshalResponse(m *extprocv3.ProcessingResponse) (mem.BufferSlice, bool) {
	n, ok := sizeResponse(m)
	if !ok {
		return nil, false
	}
	if mem.IsBelowBufferPoolingThreshold(n) {
		return mem.BufferSlice{mem.SliceBuffer(appendResponse(make([]byte, 0, n), m))}, true
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(n)
	*buf = appendResponse((*buf)[:0], m)
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, true
}

// Field numbers of the messages marshalResponse writes.
const (
	fRespRequestHeaders  = 1
	fRespResponseHeaders = 2
	fRespRequestBody     = 3
	fRespResponseBody    = 4
	fRespDynamicMetadata = 8
	fRespModeOverride    = 9

	fReplyResponse = 1 // HeadersResponse.response, BodyResponse.response

	fCommonStatus          = 1
	fCommonHeaderMutation  = 2
	fCommonBodyMutation    = 3
	fCommonClearRouteCache = 5

	fMutationSetHeaders    = 1
	fMutationRemoveHeaders = 2

	fOptionHeader         = 1
	fOptionAppend         = 2
	fOptionAppendAction   = 3
	fOptionKeepEmptyValue = 4

	fBodyMutationBody      = 1
	fBodyMutationClearBody = 2

	fStructFields = 1
	fEntryKey     = 1
	fEntryValue   = 2
	fValueNumber  = 2
	fValueString  = 3
	fValueBool    = 4
	fValueStruct  = 5

	fBoolValue = 1
)

// Sizes of fields (tag included).
func sizeBytesField(num protowire.Number, n int) int {
	return protowire.SizeTag(num) + protowire.SizeBytes(n)
}

func sizeVarintField(num protowire.Number, v uint64) int {
	return protowire.SizeTag(num) + protowire.SizeVarint(v)
}

func sizeBoolField(num protowire.Number, v bool) int {
	if !v {
		return 0
	}
	return protowire.SizeTag(num) + 1
}

func sizeEnumField(num protowire.Number, v int32) int {
	if v == 0 {
		return 0
	}
	return sizeVarintField(num, uint64(int64(v)))
}

func sizeStringField(num protowire.Number, s string) (int, bool) {
	if s == "" {
		return 0, true
	}
	return sizeBytesField(num, len(s)), utf8.ValidString(s)
}

func appendBytesField(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func appendStringField(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendBoolField(b []byte, num protowire.Number, v bool) []byte {
	if !v {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return append(b, 1)
}

func appendEnumField(b []byte, num protowire.Number, v int32) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(int64(v)))
}

// appendMessageHeader appends the tag and length of a message field whose
// body is n bytes long.
func appendMessageHeader(b []byte, num protowire.Number, n int) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendVarint(b, uint64(n))
}

func sizeResponse(m *extprocv3.ProcessingResponse) (int, bool) {
	if len(m.TypedDynamicMetadata) > 0 || m.OverrideMessageTimeout != nil || m.ServerWindowUpdate != nil ||
		m.RequestDrain || m.RequestDrainRequests || m.RequestDrainResponses {
		return 0, false
	}
	n := 0
	num, common, ok := replyOf(m)
	if !ok {
		return 0, false
	}
	if num != 0 {
		inner := 0
		if common != nil {
			c, ok := sizeCommon(common)
			if !ok {
				return 0, false
			}
			inner = sizeBytesField(fReplyResponse, c)
		}
		n += sizeBytesField(num, inner)
	}
	if m.DynamicMetadata != nil {
		s, ok := sizeStruct(m.DynamicMetadata)
		if !ok {
			return 0, false
		}
		n += sizeBytesField(fRespDynamicMetadata, s)
	}
	if m.ModeOverride != nil {
		n += sizeBytesField(fRespModeOverride, sizeMode(m.ModeOverride))
	}
	return n, true
}

// replyOf is the reply's oneof field number (0: none set) and its common
// response; ok is false for a kind encodeResponse does not write.
func replyOf(m *extprocv3.ProcessingResponse) (num protowire.Number, common *extprocv3.CommonResponse, ok bool) {
	switch r := m.Response.(type) {
	case nil:
		return 0, nil, true
	case *extprocv3.ProcessingResponse_RequestHeaders:
		if r.RequestHeaders == nil {
			return 0, nil, false
		}
		return fRespRequestHeaders, r.RequestHeaders.Response, true
	case *extprocv3.ProcessingResponse_ResponseHeaders:
		if r.ResponseHeaders == nil {
			return 0, nil, false
		}
		return fRespResponseHeaders, r.ResponseHeaders.Response, true
	case *extprocv3.ProcessingResponse_RequestBody:
		if r.RequestBody == nil {
			return 0, nil, false
		}
		return fRespRequestBody, r.RequestBody.Response, true
	case *extprocv3.ProcessingResponse_ResponseBody:
		if r.ResponseBody == nil {
			return 0, nil, false
		}
		return fRespResponseBody, r.ResponseBody.Response, true
	}
	return 0, nil, false
}

func appendResponse(b []byte, m *extprocv3.ProcessingResponse) []byte {
	// Protobuf writes the fields outside a oneof first, then the oneof.
	if m.DynamicMetadata != nil {
		s, _ := sizeStruct(m.DynamicMetadata)
		b = appendMessageHeader(b, fRespDynamicMetadata, s)
		b = appendStruct(b, m.DynamicMetadata)
	}
	if m.ModeOverride != nil {
		b = appendMessageHeader(b, fRespModeOverride, sizeMode(m.ModeOverride))
		b = appendMode(b, m.ModeOverride)
	}
	if num, common, _ := replyOf(m); num != 0 {
		inner := 0
		if common != nil {
			c, _ := sizeCommon(common)
			inner = sizeBytesField(fReplyResponse, c)
		}
		b = appendMessageHeader(b, num, inner)
		if common != nil {
			c, _ := sizeCommon(common)
			b = appendMessageHeader(b, fReplyResponse, c)
			b = appendCommon(b, common)
		}
	}
	return b
}

func sizeCommon(c *extprocv3.CommonResponse) (int, bool) {
	if c.Trailers != nil {
		return 0, false
	}
	n := sizeEnumField(fCommonStatus, int32(c.Status))
	if c.HeaderMutation != nil {
		h, ok := sizeHeaderMutation(c.HeaderMutation)
		if !ok {
			return 0, false
		}
		n += sizeBytesField(fCommonHeaderMutation, h)
	}
	if c.BodyMutation != nil {
		bm, ok := sizeBodyMutation(c.BodyMutation)
		if !ok {
			return 0, false
		}
		n += sizeBytesField(fCommonBodyMutation, bm)
	}
	return n + sizeBoolField(fCommonClearRouteCache, c.ClearRouteCache), true
}

func appendCommon(b []byte, c *extprocv3.CommonResponse) []byte {
	b = appendEnumField(b, fCommonStatus, int32(c.Status))
	if c.HeaderMutation != nil {
		h, _ := sizeHeaderMutation(c.HeaderMutation)
		b = appendMessageHeader(b, fCommonHeaderMutation, h)
		b = appendHeaderMutation(b, c.HeaderMutation)
	}
	if c.BodyMutation != nil {
		bm, _ := sizeBodyMutation(c.BodyMutation)
		b = appendMessageHeader(b, fCommonBodyMutation, bm)
		b = appendBodyMutation(b, c.BodyMutation)
	}
	return appendBoolField(b, fCommonClearRouteCache, c.ClearRouteCache)
}

func sizeHeaderMutation(h *extprocv3.HeaderMutation) (int, bool) {
	n := 0
	for _, o := range h.SetHeaders {
		if o == nil {
			return 0, false
		}
		s, ok := sizeOption(o)
		if !ok {
			return 0, false
		}
		n += sizeBytesField(fMutationSetHeaders, s)
	}
	for _, r := range h.RemoveHeaders {
		if !utf8.ValidString(r) {
			return 0, false
		}
		n += sizeBytesField(fMutationRemoveHeaders, len(r))
	}
	return n, true
}

func appendHeaderMutation(b []byte, h *extprocv3.HeaderMutation) []byte {
	for _, o := range h.SetHeaders {
		s, _ := sizeOption(o)
		b = appendMessageHeader(b, fMutationSetHeaders, s)
		b = appendOption(b, o)
	}
	for _, r := range h.RemoveHeaders {
		b = protowire.AppendTag(b, fMutationRemoveHeaders, protowire.BytesType)
		b = protowire.AppendString(b, r)
	}
	return b
}

func sizeOption(o *corev3.HeaderValueOption) (int, bool) {
	n := 0
	if o.Header != nil {
		h, ok := sizeHeaderValue(o.Header)
		if !ok {
			return 0, false
		}
		n += sizeBytesField(fOptionHeader, h)
	}
	if o.Append != nil {
		n += sizeBytesField(fOptionAppend, sizeBoolField(fBoolValue, o.Append.Value))
	}
	return n + sizeEnumField(fOptionAppendAction, int32(o.AppendAction)) + sizeBoolField(fOptionKeepEmptyValue, o.KeepEmptyValue), true
}

func appendOption(b []byte, o *corev3.HeaderValueOption) []byte {
	if o.Header != nil {
		h, _ := sizeHeaderValue(o.Header)
		b = appendMessageHeader(b, fOptionHeader, h)
		b = appendHeaderValue(b, o.Header)
	}
	if o.Append != nil {
		b = appendMessageHeader(b, fOptionAppend, sizeBoolField(fBoolValue, o.Append.Value))
		b = appendBoolField(b, fBoolValue, o.Append.Value)
	}
	b = appendEnumField(b, fOptionAppendAction, int32(o.AppendAction))
	return appendBoolField(b, fOptionKeepEmptyValue, o.KeepEmptyValue)
}

func sizeHeaderValue(h *corev3.HeaderValue) (int, bool) {
	k, ok1 := sizeStringField(fHeaderKey, h.Key)
	v, ok2 := sizeStringField(fHeaderValue, h.Value)
	n := k + v
	if len(h.RawValue) > 0 {
		n += sizeBytesField(fHeaderRawValue, len(h.RawValue))
	}
	return n, ok1 && ok2
}

func appendHeaderValue(b []byte, h *corev3.HeaderValue) []byte {
	b = appendStringField(b, fHeaderKey, h.Key)
	b = appendStringField(b, fHeaderValue, h.Value)
	if len(h.RawValue) > 0 {
		b = appendBytesField(b, fHeaderRawValue, h.RawValue)
	}
	return b
}

func sizeBodyMutation(bm *extprocv3.BodyMutation) (int, bool) {
	switch m := bm.Mutation.(type) {
	case nil:
		return 0, true
	case *extprocv3.BodyMutation_Body:
		return sizeBytesField(fBodyMutationBody, len(m.Body)), true
	case *extprocv3.BodyMutation_ClearBody:
		return protowire.SizeTag(fBodyMutationClearBody) + 1, true
	}
	return 0, false
}

func appendBodyMutation(b []byte, bm *extprocv3.BodyMutation) []byte {
	switch m := bm.Mutation.(type) {
	case *extprocv3.BodyMutation_Body:
		b = appendBytesField(b, fBodyMutationBody, m.Body)
	case *extprocv3.BodyMutation_ClearBody:
		b = protowire.AppendTag(b, fBodyMutationClearBody, protowire.VarintType)
		b = protowire.AppendVarint(b, protowire.EncodeBool(m.ClearBody))
	}
	return b
}

func sizeMode(p *filterv3.ProcessingMode) int {
	return sizeEnumField(1, int32(p.RequestHeaderMode)) + sizeEnumField(2, int32(p.ResponseHeaderMode)) +
		sizeEnumField(3, int32(p.RequestBodyMode)) + sizeEnumField(4, int32(p.ResponseBodyMode)) +
		sizeEnumField(5, int32(p.RequestTrailerMode)) + sizeEnumField(6, int32(p.ResponseTrailerMode))
}

func appendMode(b []byte, p *filterv3.ProcessingMode) []byte {
	b = appendEnumField(b, 1, int32(p.RequestHeaderMode))
	b = appendEnumField(b, 2, int32(p.ResponseHeaderMode))
	b = appendEnumField(b, 3, int32(p.RequestBodyMode))
	b = appendEnumField(b, 4, int32(p.ResponseBodyMode))
	b = appendEnumField(b, 5, int32(p.RequestTrailerMode))
	return appendEnumField(b, 6, int32(p.ResponseTrailerMode))
}

// maxStructFields bounds the members of a Struct marshalResponse writes
// (its keys are sorted on the stack, as proto's deterministic output
// orders them); a larger one goes through proto.
const maxStructFields = 16

// structKeys is s's keys in order, in buf.
func structKeys(s *structpb.Struct, buf *[maxStructFields]string) ([]string, bool) {
	if len(s.Fields) > maxStructFields {
		return nil, false
	}
	keys := buf[:0]
	for k := range s.Fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys, true
}

func sizeStruct(s *structpb.Struct) (int, bool) {
	var buf [maxStructFields]string
	keys, ok := structKeys(s, &buf)
	if !ok {
		return 0, false
	}
	n := 0
	for _, k := range keys {
		e, ok := sizeEntry(k, s.Fields[k])
		if !ok {
			return 0, false
		}
		n += sizeBytesField(fStructFields, e)
	}
	return n, true
}

func sizeEntry(k string, v *structpb.Value) (int, bool) {
	if v == nil {
		return 0, false
	}
	kn, ok := sizeStringField(fEntryKey, k)
	if !ok {
		return 0, false
	}
	vn, ok := sizeValue(v)
	if !ok {
		return 0, false
	}
	return kn + sizeBytesField(fEntryValue, vn), true
}

func appendStruct(b []byte, s *structpb.Struct) []byte {
	var buf [maxStructFields]string
	keys, _ := structKeys(s, &buf)
	for _, k := range keys {
		v := s.Fields[k]
		e, _ := sizeEntry(k, v)
		b = appendMessageHeader(b, fStructFields, e)
		b = appendStringField(b, fEntryKey, k)
		vn, _ := sizeValue(v)
		b = appendMessageHeader(b, fEntryValue, vn)
		b = appendValue(b, v)
	}
	return b
}

func sizeValue(v *structpb.Value) (int, bool) {
	switch k := v.Kind.(type) {
	case nil:
		return 0, true
	case *structpb.Value_NumberValue:
		return protowire.SizeTag(fValueNumber) + protowire.SizeFixed64(), true
	case *structpb.Value_StringValue:
		return sizeBytesField(fValueString, len(k.StringValue)), utf8.ValidString(k.StringValue)
	case *structpb.Value_BoolValue:
		return protowire.SizeTag(fValueBool) + 1, true
	case *structpb.Value_StructValue:
		if k.StructValue == nil {
			return 0, false
		}
		n, ok := sizeStruct(k.StructValue)
		return sizeBytesField(fValueStruct, n), ok
	}
	return 0, false
}

func appendValue(b []byte, v *structpb.Value) []byte {
	switch k := v.Kind.(type) {
	case *structpb.Value_NumberValue:
		b = protowire.AppendTag(b, fValueNumber, protowire.Fixed64Type)
		b = protowire.AppendFixed64(b, math.Float64bits(k.NumberValue))
	case *structpb.Value_StringValue:
		b = protowire.AppendTag(b, fValueString, protowire.BytesType)
		b = protowire.AppendString(b, k.StringValue)
	case *structpb.Value_BoolValue:
		b = protowire.AppendTag(b, fValueBool, protowire.VarintType)
		b = protowire.AppendVarint(b, protowire.EncodeBool(k.BoolValue))
	case *structpb.Value_StructValue:
		n, _ := sizeStruct(k.StructValue)
		b = appendMessageHeader(b, fValueStruct, n)
		b = appendStruct(b, k.StructValue)
	}
	return b
}
