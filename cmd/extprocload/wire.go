package main

import (
	"context"
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// The client side of a Process stream reads each reply's bytes itself: the
// kind of the reply (the oneof's field number) and its dynamic metadata,
// which it forwards to the access log as bytes. Decoding every reply into
// protobuf messages (header mutations, metadata Structs) cost the client
// about half again as much CPU per request with keymux as with the no-op
// server, whose replies are empty; on a machine whose cores the client
// shares with the servers that cost was charged to keymux's figures. The
// requests are still marshalled with proto, the same for both servers.

// frame is one message's bytes, passed through gRPC as they are.
type frame struct{ b []byte }

// frameCodec is the Process stream's codec on the client: messages are
// frames (the wire format is protobuf's: the content type stays "proto").
type frameCodec struct{}

func (frameCodec) Name() string { return "proto" }

func (frameCodec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*frame)
	if !ok {
		return nil, fmt.Errorf("frameCodec: cannot marshal %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(f.b)}, nil
}

func (frameCodec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return fmt.Errorf("frameCodec: cannot unmarshal into %T", v)
	}
	f.b = data.Materialize()
	return nil
}

// openProcess opens a Process stream on conn whose messages are frames.
func openProcess(ctx context.Context, conn *grpc.ClientConn) (grpc.ClientStream, error) {
	return conn.NewStream(ctx, &extprocv3.ExternalProcessor_ServiceDesc.Streams[0],
		extprocv3.ExternalProcessor_Process_FullMethodName, grpc.ForceCodecV2(frameCodec{}))
}

// Field numbers of envoy.service.ext_proc.v3.ProcessingResponse the client
// reads, of google.protobuf.Struct / Value, and of
// envoy.config.core.v3.Metadata.
const (
	replyRequestHeaders    = 1
	replyResponseHeaders   = 2
	replyRequestBody       = 3
	replyImmediateResponse = 7
	replyDynamicMetadata   = 8

	structFields      = 1
	mapEntryKey       = 1
	mapEntryValue     = 2
	valueStructValue  = 5
	metadataFilterMap = 1
)

// replyKind is the field number of the reply keymux must give to req.
func replyKind(req *extprocv3.ProcessingRequest) protowire.Number {
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return replyRequestHeaders
	case *extprocv3.ProcessingRequest_RequestBody:
		return replyRequestBody
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return replyResponseHeaders
	}
	return 0
}

// readReply checks that b, a ProcessingResponse, is a reply of req's kind,
// and returns its dynamic metadata's bytes (a Struct; nil when none). Any
// other reply is decoded whole for checkReply's message.
func readReply(req *extprocv3.ProcessingRequest, b []byte) (md []byte, err error) {
	var kind protowire.Number
	err = eachField(b, func(num protowire.Number, typ protowire.Type, v []byte) {
		switch {
		case typ != protowire.BytesType:
		case num >= replyRequestHeaders && num <= replyImmediateResponse:
			kind = num
		case num == replyDynamicMetadata:
			md = append(md, v...) // a message given twice is merged
		}
	})
	if err != nil {
		return nil, fmt.Errorf("reply to %s: %w", kindName(req), err)
	}
	if kind != replyKind(req) {
		resp := new(extprocv3.ProcessingResponse)
		if err := proto.Unmarshal(b, resp); err != nil {
			return nil, fmt.Errorf("reply to %s: %w", kindName(req), err)
		}
		return nil, checkReply(req, resp)
	}
	return md, nil
}

// metadataBytes gathers the dynamic metadata of a request's replies by
// namespace, as Envoy does: the fields of a namespace set again are merged
// (a Struct's bytes appended to the earlier ones decode as that merge).
type metadataBytes struct {
	ns  []string
	val [][]byte
}

// add merges md, a google.protobuf.Struct of namespaces whose values are
// Structs, into m.
func (m *metadataBytes) add(md []byte) error {
	var entries [][]byte
	if err := eachField(md, func(num protowire.Number, typ protowire.Type, v []byte) {
		if num == structFields && typ == protowire.BytesType {
			entries = append(entries, v)
		}
	}); err != nil {
		return err
	}
	for _, entry := range entries {
		var key, value []byte
		if err := eachField(entry, func(num protowire.Number, typ protowire.Type, v []byte) {
			switch {
			case typ != protowire.BytesType:
			case num == mapEntryKey:
				key = v
			case num == mapEntryValue:
				value = v
			}
		}); err != nil {
			return err
		}
		var st []byte // nil: the value is not a Struct, which Envoy does not keep
		if err := eachField(value, func(num protowire.Number, typ protowire.Type, v []byte) {
			if num == valueStructValue && typ == protowire.BytesType {
				// Present, even empty, is not nil; a message field given
				// twice merges.
				st = append(append([]byte{}, st...), v...)
			}
		}); err != nil {
			return err
		}
		if st != nil {
			m.merge(string(key), st)
		}
	}
	return nil
}

func (m *metadataBytes) merge(ns string, st []byte) {
	for i, have := range m.ns {
		if have == ns {
			m.val[i] = append(m.val[i], st...)
			return
		}
	}
	m.ns = append(m.ns, ns)
	m.val = append(m.val, append([]byte(nil), st...))
}

// appendTo adds m's namespaces to md's filter_metadata: they are written as
// the map's entries after md's own, so a namespace in both is m's.
func (m *metadataBytes) appendTo(md *corev3.Metadata) {
	if len(m.ns) == 0 {
		return
	}
	raw := md.ProtoReflect().GetUnknown()
	for i, ns := range m.ns {
		var entry []byte
		entry = protowire.AppendTag(entry, mapEntryKey, protowire.BytesType)
		entry = protowire.AppendString(entry, ns)
		entry = protowire.AppendTag(entry, mapEntryValue, protowire.BytesType)
		entry = protowire.AppendBytes(entry, m.val[i])
		raw = protowire.AppendTag(raw, metadataFilterMap, protowire.BytesType)
		raw = protowire.AppendBytes(raw, entry)
	}
	md.ProtoReflect().SetUnknown(raw)
}

// eachField calls fn with each field of message b in order: its number,
// its wire type and, for a length-delimited field, its bytes.
func eachField(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte)) error {
	for off := 0; off < len(b); {
		num, typ, n := protowire.ConsumeTag(b[off:])
		if n < 0 {
			return protowire.ParseError(n)
		}
		off += n
		m := protowire.ConsumeFieldValue(num, typ, b[off:])
		if m < 0 {
			return protowire.ParseError(m)
		}
		var v []byte
		if typ == protowire.BytesType {
			v, _ = protowire.ConsumeBytes(b[off:])
		}
		fn(num, typ, v)
		off += m
	}
	return nil
}
