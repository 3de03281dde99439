package store

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path"
	"path/filepath"
	"strings"

	"github.com/keymux/keymux/policy"
)

// The operator's defaults for Scope (serve's --secret-env and --secret-dir).
var (
	DefaultSecretEnv  = []string{"*_API_KEY", "*_API_KEY_*", "KEYMUX_*"}
	DefaultSecretDirs = []string{"/run/secrets"}
)

// Scope is what the operator lets key documents reach. Whoever can write a
// key document chooses its secret_ref and its base_url, and keymux sends
// the secret to that URL: without a scope, a document could read any
// environment variable or file of keymux's (a Consul token, a service
// account) and send it to a host of its choosing. A document outside the
// scope is refused.
type Scope struct {
	// SecretEnv are path.Match patterns an env: name must match.
	SecretEnv []string
	// SecretDirs are the directories a file: path must lie under (after
	// symbolic links are followed).
	SecretDirs []string
	// Upstreams are allowed as base_url although loopback, link-local,
	// unspecified or an Envoy admin address: "host" (any port), "host:port"
	// or a CIDR prefix ("127.0.0.0/8").
	Upstreams []string
	// AdminAddrs are Envoy admin addresses (host:port), never an upstream
	// unless Upstreams names them.
	AdminAddrs []string
}

// DefaultScope is serve's scope without flags.
func DefaultScope() *Scope {
	return &Scope{SecretEnv: DefaultSecretEnv, SecretDirs: DefaultSecretDirs, AdminAddrs: []string{"127.0.0.1:9901", "localhost:9901"}}
}

var errOutOfScope = errors.New("outside the operator's scope")

// Resolver returns resolve (nil: ResolveSecretRef) limited to the scope's
// references. Its errors name the reference, never a value.
func (s *Scope) Resolver(resolve SecretResolver) SecretResolver {
	if resolve == nil {
		resolve = ResolveSecretRef
	}
	return func(ref string) (string, error) {
		if err := s.checkRef(ref); err != nil {
			return "", err
		}
		return resolve(ref)
	}
}

func (s *Scope) checkRef(ref string) error {
	if name, ok := strings.CutPrefix(ref, "env:"); ok {
		for _, p := range s.SecretEnv {
			if ok, _ := path.Match(p, name); ok {
				return nil
			}
		}
		return fmt.Errorf("%w: environment variable %s matches no --secret-env pattern (%s)", errOutOfScope, name, strings.Join(s.SecretEnv, ", "))
	}
	if p, ok := strings.CutPrefix(ref, "file:"); ok {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("%w: %s is not an absolute path", errOutOfScope, p)
		}
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			real = filepath.Clean(p)
		}
		for _, d := range s.SecretDirs {
			if under(filepath.Clean(p), d) && under(real, d) {
				return nil
			}
		}
		return fmt.Errorf("%w: %s is under no --secret-dir (%s)", errOutOfScope, p, strings.Join(s.SecretDirs, ", "))
	}
	return ErrBadSecretRef
}

// under reports whether p lies below dir, comparing dir with its symbolic
// links followed as well.
func under(p, dir string) bool {
	for _, d := range []string{filepath.Clean(dir), evalOr(dir)} {
		if strings.HasPrefix(p, strings.TrimSuffix(d, string(filepath.Separator))+string(filepath.Separator)) {
			return true
		}
	}
	return false
}

func evalOr(p string) string {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return filepath.Clean(p)
}

// CheckUpstream refuses a key whose base_url host is loopback, link-local
// (169.254.0.0/16, fe80::/10: cloud metadata services), unspecified or an
// Envoy admin address, unless Upstreams allows it. Names are not resolved:
// only literal addresses and "localhost" are recognised.
func (s *Scope) CheckUpstream(k *policy.Key) error {
	hostport := k.Host
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		host, port = strings.Trim(hostport, "[]"), ""
	}
	if port == "" {
		port = "443"
		if k.Scheme == "http" {
			port = "80"
		}
		hostport = net.JoinHostPort(host, port)
	}
	for _, a := range s.AdminAddrs {
		// Only an entry naming the address lifts this, not a CIDR prefix.
		if strings.EqualFold(a, hostport) && !s.allowed(host, hostport, false) {
			return fmt.Errorf("%w: %s is Envoy's admin address (allow it with --allow-upstream)", errOutOfScope, hostport)
		}
	}
	if s.allowed(host, hostport, true) {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	switch {
	case host == "localhost" || strings.HasSuffix(host, ".localhost"), err == nil && ip.Unmap().IsLoopback():
		return fmt.Errorf("%w: %s is a loopback address (allow it with --allow-upstream)", errOutOfScope, host)
	case err == nil && (ip.Unmap().IsLinkLocalUnicast() || ip.IsLinkLocalMulticast()):
		return fmt.Errorf("%w: %s is a link-local address (allow it with --allow-upstream)", errOutOfScope, host)
	case err == nil && ip.IsUnspecified():
		return fmt.Errorf("%w: %s is the unspecified address", errOutOfScope, host)
	}
	return nil
}

// allowed reports whether Upstreams names host or hostport, or (with
// prefixes) holds a CIDR prefix containing host.
func (s *Scope) allowed(host, hostport string, prefixes bool) bool {
	ip, ipErr := netip.ParseAddr(host)
	for _, a := range s.Upstreams {
		if pfx, err := netip.ParsePrefix(a); err == nil {
			if prefixes && ipErr == nil && pfx.Contains(ip.Unmap()) {
				return true
			}
			continue
		}
		if strings.EqualFold(a, hostport) || strings.EqualFold(strings.Trim(a, "[]"), host) {
			return true
		}
	}
	return false
}
