package extproc

import (
	"math"
	"slices"
	"strings"
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
	var e structEncoder
	n, ok := sizeResponse(&e, m)
	if !ok {
		return nil, false
	}
	if mem.IsBelowBufferPoolingThreshold(n) {
		return mem.BufferSlice{mem.SliceBuffer(appendResponse(&e, make([]byte, 0, n), m))}, true
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(n)
	*buf = appendResponse(&e, (*buf)[:0], m)
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
	fValueNull    = 1
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

func sizeResponse(e *structEncoder, m *extprocv3.ProcessingResponse) (int, bool) {
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
		s, ok := e.size(m.DynamicMetadata)
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
// response; ok is false for a kind marshalResponse does not write.
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

func appendResponse(e *structEncoder, b []byte, m *extprocv3.ProcessingResponse) []byte {
	// Protobuf writes the fields outside a oneof first, then the oneof.
	if m.DynamicMetadata != nil {
		b = appendMessageHeader(b, fRespDynamicMetadata, e.sizeOfNext())
		b = e.append(b)
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

// The Structs of a reply (dynamic metadata) are sized once: the sizing
// pass records each one's members, sorted by key as proto's deterministic
// output orders them, and its size, in the order the writing pass meets
// them (depth first), so that neither pass sorts or sizes a map twice.
type structEncoder struct {
	structs [maxStructs]structSize
	n, next int // the structs sized; the writing pass's next one
	members [maxStructMembers]member
	used    int
}

type member struct {
	key string
	val *structpb.Value
}

// structSize is a struct's members (e.members[first:first+count]) and size.
type structSize struct {
	first, count, size int
}

// maxStructs and maxStructMembers bound the Structs of one reply that
// marshalResponse writes, and their members; a reply with more goes
// through proto.
const (
	maxStructs       = 8
	maxStructMembers = 32
)

func (e *structEncoder) size(s *structpb.Struct) (int, bool) {
	if len(s.Fields) > len(e.members)-e.used || e.n == len(e.structs) {
		return 0, false
	}
	ms := e.members[e.used : e.used+len(s.Fields)]
	e.used += len(s.Fields)
	j := 0
	for k, v := range s.Fields {
		ms[j] = member{k, v}
		j++
	}
	slices.SortFunc(ms, func(a, b member) int { return strings.Compare(a.key, b.key) })
	i := e.n
	e.structs[i] = structSize{first: e.used - len(ms), count: len(ms)}
	e.n++
	n := 0
	for _, m := range ms {
		if m.val == nil {
			return 0, false
		}
		if !utf8.ValidString(m.key) {
			return 0, false
		}
		kn := sizeBytesField(fEntryKey, len(m.key)) // a map entry's key is written even when empty
		vn, ok := e.sizeValue(m.val)
		if !ok {
			return 0, false
		}
		n += sizeBytesField(fStructFields, kn+sizeBytesField(fEntryValue, vn))
	}
	e.structs[i].size = n
	return n, true
}

func (e *structEncoder) sizeValue(v *structpb.Value) (int, bool) {
	switch k := v.Kind.(type) {
	case nil:
		return 0, true
	case *structpb.Value_NullValue:
		return sizeVarintField(fValueNull, uint64(int64(k.NullValue))), true
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
		n, ok := e.size(k.StructValue)
		return sizeBytesField(fValueStruct, n), ok
	}
	return 0, false
}

// sizeOfNext is the size of the next struct the writing pass meets.
func (e *structEncoder) sizeOfNext() int { return e.structs[e.next].size }

// valueSize is the size of v in the writing pass (after the sizing pass).
func (e *structEncoder) valueSize(v *structpb.Value) int {
	switch k := v.Kind.(type) {
	case *structpb.Value_NullValue:
		return sizeVarintField(fValueNull, uint64(int64(k.NullValue)))
	case *structpb.Value_NumberValue:
		return protowire.SizeTag(fValueNumber) + protowire.SizeFixed64()
	case *structpb.Value_StringValue:
		return sizeBytesField(fValueString, len(k.StringValue))
	case *structpb.Value_BoolValue:
		return protowire.SizeTag(fValueBool) + 1
	case *structpb.Value_StructValue:
		return sizeBytesField(fValueStruct, e.sizeOfNext())
	}
	return 0
}

// append writes the next struct (its tag and length written by the caller).
func (e *structEncoder) append(b []byte) []byte {
	st := e.structs[e.next]
	e.next++
	for _, m := range e.members[st.first : st.first+st.count] {
		vn := e.valueSize(m.val)
		b = appendMessageHeader(b, fStructFields, sizeBytesField(fEntryKey, len(m.key))+sizeBytesField(fEntryValue, vn))
		b = protowire.AppendTag(b, fEntryKey, protowire.BytesType)
		b = protowire.AppendString(b, m.key)
		b = appendMessageHeader(b, fEntryValue, vn)
		switch k := m.val.Kind.(type) {
		case *structpb.Value_NullValue:
			b = protowire.AppendTag(b, fValueNull, protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(int64(k.NullValue)))
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
			b = appendMessageHeader(b, fValueStruct, e.sizeOfNext())
			b = e.append(b)
		}
	}
	return b
}
