package extproc

import (
	"strconv"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// The replies of the request path are built in storage an exchange takes
// from a pool (replies) rather than with one allocation per proto, header
// option and value: the decision path of a chat request then allocates a
// handful of times instead of ~80. A reply is written once and never
// changed while its stream is open; a second reply of the same kind gets
// fresh storage. The Process loop hands the storage back when its stream
// ends: every reply was serialized by then (gRPC encodes a message, and
// runs the stats handlers on it, within Send).

// headersReplyMsg is the protos of one request-headers reply.
type headersReplyMsg struct {
	resp   extprocv3.ProcessingResponse
	kind   extprocv3.ProcessingResponse_RequestHeaders
	hdrs   extprocv3.HeadersResponse
	common extprocv3.CommonResponse
}

func (m *headersReplyMsg) build(mut *extprocv3.HeaderMutation, reroute bool) *extprocv3.ProcessingResponse {
	m.common.HeaderMutation, m.common.ClearRouteCache = mut, reroute && mut != nil
	m.hdrs.Response = &m.common
	m.kind.RequestHeaders = &m.hdrs
	m.resp.Response = &m.kind
	return &m.resp
}

// bodyReplyMsg is the protos of one request-body reply.
type bodyReplyMsg struct {
	resp    extprocv3.ProcessingResponse
	kind    extprocv3.ProcessingResponse_RequestBody
	body    extprocv3.BodyResponse
	common  extprocv3.CommonResponse
	bodyMut extprocv3.BodyMutation
	newBody extprocv3.BodyMutation_Body
}

func (m *bodyReplyMsg) build(mut *extprocv3.HeaderMutation, body []byte, reroute bool) *extprocv3.ProcessingResponse {
	m.common.HeaderMutation, m.common.ClearRouteCache = mut, reroute && mut != nil
	m.common.BodyMutation = nil
	if body != nil {
		m.newBody.Body = body
		m.bodyMut.Mutation = &m.newBody
		m.common.BodyMutation = &m.bodyMut
	}
	m.body.Response = &m.common
	m.kind.RequestBody = &m.body
	m.resp.Response = &m.kind
	return &m.resp
}

// responseBodyReply passes a response body message on, with the header
// mutation mut and replaced by body when they are not nil.
func responseBodyReply(mut *extprocv3.HeaderMutation, body []byte) *extprocv3.ProcessingResponse {
	br := &extprocv3.BodyResponse{}
	if mut != nil || body != nil {
		cr := &extprocv3.CommonResponse{HeaderMutation: mut}
		if body != nil {
			cr.BodyMutation = &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: body}}
		}
		br.Response = cr
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: br}}
}

func headersReply(mut *extprocv3.HeaderMutation, reroute bool) *extprocv3.ProcessingResponse {
	return new(headersReplyMsg).build(mut, reroute)
}

func bodyReply(mut *extprocv3.HeaderMutation, body []byte, reroute bool) *extprocv3.ProcessingResponse {
	return new(bodyReplyMsg).build(mut, body, reroute)
}

// mutationHeaders is how many header options a forwarding mutation holds
// in its own storage: today's longest is 9 (upstream, authority, path,
// credential, version, call, max retries, traceparent, content-length).
// Further options are allocated.
const mutationHeaders = 10

// mutationMsg is the header mutation of one forwarding reply: the options,
// their header values and their raw values (in raw, whose array is rawBuf
// until the values outgrow it).
type mutationMsg struct {
	mut    extprocv3.HeaderMutation
	opts   [mutationHeaders]corev3.HeaderValueOption
	vals   [mutationHeaders]corev3.HeaderValue
	ptrs   [mutationHeaders]*corev3.HeaderValueOption
	n      int
	raw    []byte
	rawBuf [384]byte
}

// start returns the empty mutation, removing remove.
func (m *mutationMsg) start(remove []string) *extprocv3.HeaderMutation {
	m.mut.RemoveHeaders = remove
	m.mut.SetHeaders = m.ptrs[:0]
	m.n = 0
	m.raw = m.rawBuf[:0]
	return &m.mut
}

// set appends an overwrite option of key to the mutation; its raw value is
// the concatenation of parts (setHeader's option, without an allocation
// while the storage lasts).
func (m *mutationMsg) set(key string, parts ...string) {
	start := len(m.raw)
	for _, p := range parts {
		m.raw = append(m.raw, p...)
	}
	m.add(key, start)
}

// setInt appends an overwrite option of key with the decimal value n.
func (m *mutationMsg) setInt(key string, n int) {
	start := len(m.raw)
	m.raw = strconv.AppendInt(m.raw, int64(n), 10)
	m.add(key, start)
}

// add appends the option of key whose value is raw[start:].
func (m *mutationMsg) add(key string, start int) {
	value := m.raw[start:len(m.raw):len(m.raw)]
	if m.n == len(m.opts) {
		m.mut.SetHeaders = append(m.mut.SetHeaders, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: key, RawValue: value}})
		return
	}
	v, o := &m.vals[m.n], &m.opts[m.n]
	v.Key, v.RawValue = key, value
	o.Header = v
	m.n++
	m.mut.SetHeaders = append(m.mut.SetHeaders, o)
}

// metadataMsg is keymux's dynamic metadata on one forwarding reply:
// {MetadataNamespace: {name: string value, …}}.
type metadataMsg struct {
	outer, inner structpb.Struct
	ns           structpb.Value
	nsKind       structpb.Value_StructValue
	vals         [len(metadataFields)]structpb.Value
	strs         [len(metadataFields)]structpb.Value_StringValue
}

// metadataFields are the fields of keymux's dynamic metadata, in the
// order of the values build takes.
var metadataFields = [...]string{metaCallID, metaKeyID, "model_original", "model_final", "client_id"}

// build returns the metadata of values (one per metadataFields name); an
// empty client id is left out. Its maps are kept with the storage and
// refilled when it is used again.
func (m *metadataMsg) build(values [len(metadataFields)]string) *structpb.Struct {
	fields := m.inner.Fields
	if fields == nil {
		fields = make(map[string]*structpb.Value, len(metadataFields))
	}
	clear(fields)
	for i, name := range metadataFields {
		if name == "client_id" && values[i] == "" {
			continue
		}
		m.strs[i].StringValue = values[i]
		m.vals[i].Kind = &m.strs[i]
		fields[name] = &m.vals[i]
	}
	m.inner.Fields = fields
	m.nsKind.StructValue = &m.inner
	m.ns.Kind = &m.nsKind
	if m.outer.Fields == nil {
		m.outer.Fields = map[string]*structpb.Value{MetadataNamespace: &m.ns}
	}
	return &m.outer
}

// repliesPool recycles the reply storage of ended streams.
var repliesPool = sync.Pool{New: func() any { return new(replies) }}

// getReplies takes reply storage from the pool, every part unused.
func getReplies() *replies {
	r := repliesPool.Get().(*replies)
	r.usedHeaders, r.usedBody, r.usedMutation, r.usedMetada = false, false, false, false
	return r
}

// putReplies gives r back to the pool: nothing may read a reply built in
// it any more.
func putReplies(r *replies) { repliesPool.Put(r) }

// replies is the reply storage of one exchange: each part is handed out
// once, a second use of the same part (or any use without storage: nil)
// allocates.
type replies struct {
	headers                  headersReplyMsg
	body                     bodyReplyMsg
	mutation                 mutationMsg
	metadata                 metadataMsg
	usedHeaders, usedBody    bool
	usedMutation, usedMetada bool
}

func (r *replies) headersMsg() *headersReplyMsg {
	if r == nil || r.usedHeaders {
		return new(headersReplyMsg)
	}
	r.usedHeaders = true
	return &r.headers
}

func (r *replies) bodyMsg() *bodyReplyMsg {
	if r == nil || r.usedBody {
		return new(bodyReplyMsg)
	}
	r.usedBody = true
	return &r.body
}

func (r *replies) mutationMsg() *mutationMsg {
	if r == nil || r.usedMutation {
		return new(mutationMsg)
	}
	r.usedMutation = true
	return &r.mutation
}

func (r *replies) metadataMsg() *metadataMsg {
	if r == nil || r.usedMetada {
		return new(metadataMsg)
	}
	r.usedMetada = true
	return &r.metadata
}
