package app

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// grpcTLS are the mTLS flags of the ext_proc port. Its replies carry
// upstream API keys: beyond loopback or a unix socket, only a client (Envoy)
// holding a certificate the client CA signed may talk to it.
type grpcTLS struct {
	cert, key, clientCA string
}

func (g *grpcTLS) register(fs *flag.FlagSet) {
	fs.StringVar(&g.cert, "grpc-tls-cert", "", "ext_proc gRPC server certificate (PEM); with --grpc-tls-key and --grpc-tls-client-ca: mTLS")
	fs.StringVar(&g.key, "grpc-tls-key", "", "private key (PEM) of --grpc-tls-cert")
	fs.StringVar(&g.clientCA, "grpc-tls-client-ca", "", "CA bundle (PEM) that must have signed the ext_proc client's (Envoy's) certificate")
}

func (g *grpcTLS) check() error {
	set := 0
	for _, v := range []string{g.cert, g.key, g.clientCA} {
		if v != "" {
			set++
		}
	}
	if set != 0 && set != 3 {
		return &usageError{msg: "--grpc-tls-cert, --grpc-tls-key and --grpc-tls-client-ca go together (mutual TLS)"}
	}
	return nil
}

// serverOption returns the gRPC credentials for mTLS, nil without the flags.
func (g *grpcTLS) serverOption() (grpc.ServerOption, error) {
	if g.cert == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(g.cert, g.key)
	if err != nil {
		return nil, fmt.Errorf("--grpc-tls-cert/--grpc-tls-key: %w", err)
	}
	pem, err := os.ReadFile(g.clientCA)
	if err != nil {
		return nil, fmt.Errorf("--grpc-tls-client-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("--grpc-tls-client-ca: no certificate found")
	}
	return grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	})), nil
}
