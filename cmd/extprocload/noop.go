package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// noopServer answers every ext_proc message with an empty reply of the
// matching kind: the floor a processor's cost is read against.
type noopServer struct {
	extprocv3.UnimplementedExternalProcessorServer
}

func (noopServer) Process(stream extprocv3.ExternalProcessor_ProcessServer) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		resp := emptyReply(req)
		if resp == nil {
			return fmt.Errorf("unexpected message %T", req.GetRequest())
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// emptyReply is the empty reply of req's kind, or nil for an unknown kind.
func emptyReply(req *extprocv3.ProcessingRequest) *extprocv3.ProcessingResponse {
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}}
	case *extprocv3.ProcessingRequest_RequestBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}}
	case *extprocv3.ProcessingRequest_RequestTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestTrailers{RequestTrailers: &extprocv3.TrailersResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseBody:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{}}}
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}}
	}
	return nil
}

// serveNoop serves the no-op processor, an access-log service that
// discards every entry, and the gRPC health service (SERVING)
// on addr until ctx ends; it prints "noop ready grpc=ADDR" once listening.
// It serves the way keymux does: the same message size limit, no other
// option.
func serveNoop(ctx context.Context, addr string, stdout io.Writer) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("-grpc: %w", err)
	}
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(40<<20), grpc.MaxSendMsgSize(40<<20))
	extprocv3.RegisterExternalProcessorServer(srv, noopServer{})
	alsv3.RegisterAccessLogServiceServer(srv, noopAccessLog{})
	healthpb.RegisterHealthServer(srv, health.NewServer()) // SERVING for ""
	fmt.Fprintf(stdout, "noop ready grpc=%s\n", lis.Addr())
	go func() {
		<-ctx.Done()
		srv.Stop()
	}()
	if err := srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}
