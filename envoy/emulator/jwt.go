package emulator

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtauthnv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// jwtFilter emulates envoy.filters.http.jwt_authn: providers with local or
// remote JWKS, RS/PS/ES/HS signatures, issuer, audiences, exp/nbf, rules
// with provider_name / provider_and_audiences / requires_any /
// requires_all / allow_missing / allow_missing_or_failed; on success the
// payload is forwarded (forward_payload_header, payload_in_metadata) and the
// token removed unless forward. See the package documentation for limits.
type jwtFilter struct {
	e         *Emulator
	cfg       *jwtauthnv3.JwtAuthentication
	providers map[string]*jwtProvider
	rules     []jwtRule
}

type jwtRule struct {
	match *route
	req   *jwtauthnv3.JwtRequirement
}

type jwtProvider struct {
	name string
	cfg  *jwtauthnv3.JwtProvider
	f    *jwtFilter

	mu      sync.Mutex
	keys    []*jwk
	fetched time.Time
}

type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Alg string `json:"alg"`
	N   string `json:"n"`
	E   string `json:"e"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
	K   string `json:"k"`
	pub any
}

func (e *Emulator) newJWTFilter(c *jwtauthnv3.JwtAuthentication) (*jwtFilter, error) {
	f := &jwtFilter{e: e, cfg: c, providers: map[string]*jwtProvider{}}
	if len(c.GetRequirementMap()) > 0 || c.GetFilterStateRules() != nil {
		return nil, errors.New("jwt_authn requirement_map and filter_state_rules are not emulated")
	}
	for name, p := range c.GetProviders() {
		jp := &jwtProvider{name: name, cfg: p, f: f}
		switch {
		case p.GetLocalJwks() != nil:
			data, err := dataSource(p.GetLocalJwks())
			if err != nil {
				return nil, fmt.Errorf("provider %q local_jwks: %w", name, err)
			}
			if jp.keys, err = parseJWKS(data); err != nil {
				return nil, fmt.Errorf("provider %q local_jwks: %w", name, err)
			}
		case p.GetRemoteJwks() != nil:
			if _, ok := e.clusters[p.GetRemoteJwks().GetHttpUri().GetCluster()]; !ok {
				return nil, fmt.Errorf("provider %q remote_jwks: cluster %q is not defined", name, p.GetRemoteJwks().GetHttpUri().GetCluster())
			}
		default:
			return nil, fmt.Errorf("provider %q: no JWKS source", name)
		}
		f.providers[name] = jp
	}
	for i, r := range c.GetRules() {
		rt := &route{cfg: &routev3.Route{Match: r.GetMatch()}}
		if err := rt.compileMatch(); err != nil {
			return nil, fmt.Errorf("rules[%d]: %w", i, err)
		}
		if r.GetRequirementName() != "" {
			return nil, fmt.Errorf("rules[%d]: requirement_name is not emulated", i)
		}
		f.rules = append(f.rules, jwtRule{match: rt, req: r.GetRequires()})
	}
	return f, nil
}

func parseJWKS(data []byte) ([]*jwk, error) {
	var set struct {
		Keys []*jwk `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	var out []*jwk
	for _, k := range set.Keys {
		if err := k.decode(); err == nil {
			out = append(out, k)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("jwks: no usable key")
	}
	return out, nil
}

func b64(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}

func (k *jwk) decode() error {
	switch k.Kty {
	case "RSA":
		n, err1 := b64(k.N)
		e, err2 := b64(k.E)
		if err1 != nil || err2 != nil || len(n) == 0 || len(e) == 0 {
			return errors.New("bad RSA key")
		}
		k.pub = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	case "EC":
		var curve elliptic.Curve
		switch k.Crv {
		case "P-256":
			curve = elliptic.P256()
		case "P-384":
			curve = elliptic.P384()
		case "P-521":
			curve = elliptic.P521()
		default:
			return errors.New("unsupported curve")
		}
		x, err1 := b64(k.X)
		y, err2 := b64(k.Y)
		if err1 != nil || err2 != nil {
			return errors.New("bad EC key")
		}
		k.pub = &ecdsa.PublicKey{Curve: curve, X: new(big.Int).SetBytes(x), Y: new(big.Int).SetBytes(y)}
	case "oct":
		key, err := b64(k.K)
		if err != nil {
			return errors.New("bad oct key")
		}
		k.pub = key
	default:
		return errors.New("unsupported kty")
	}
	return nil
}

// jwtError is a verification failure and its local reply.
type jwtError struct {
	status int
	msg    string
}

func (e *jwtError) Error() string { return e.msg }

var (
	errJwtMissing = &jwtError{http.StatusUnauthorized, "Jwt is missing"}
	errJwtBad     = &jwtError{http.StatusUnauthorized, "Jwt verification fails"}
	errJwtExpired = &jwtError{http.StatusUnauthorized, "Jwt is expired"}
	errJwtNotYet  = &jwtError{http.StatusUnauthorized, "Jwt not yet valid"}
	errJwtIssuer  = &jwtError{http.StatusUnauthorized, "Jwt issuer is not configured"}
	errJwtAud     = &jwtError{http.StatusForbidden, "Audiences in Jwt are not allowed"}
	errJwtKeys    = &jwtError{http.StatusUnauthorized, "Jwks remote fetch is failed"}
)

// decode runs the filter on the request headers; a non-nil reply is sent.
func (f *jwtFilter) decode(rq *request) *localReply {
	var req *jwtauthnv3.JwtRequirement
	for _, r := range f.rules {
		if r.match.matchesRequest(rq.hdr) {
			req = r.req
			break
		}
	}
	if req == nil {
		return nil
	}
	f.sanitize(rq, req)
	if err := f.eval(rq, req, nil); err != nil {
		je := errJwtBad
		errors.As(err, &je)
		return &localReply{
			status:  je.status,
			body:    []byte(je.msg),
			details: "jwt_authn_access_denied{" + strings.ReplaceAll(je.msg, " ", "_") + "}",
			wwwAuth: fmt.Sprintf(`Bearer realm="http://%s%s", error="invalid_token"`, rq.hdr.value(":authority"), rq.hdr.value(":path")),
		}
	}
	return nil
}

// sanitize is the extractor's sanitizeHeaders: before verifying, a matched
// requirement removes the forward_payload_header of each of its providers
// (every provider for allow_missing*), so only a verified payload can
// arrive in it.
func (f *jwtFilter) sanitize(rq *request, req *jwtauthnv3.JwtRequirement) {
	var names []string
	switch {
	case req.GetProviderName() != "":
		names = []string{req.GetProviderName()}
	case req.GetProviderAndAudiences() != nil:
		names = []string{req.GetProviderAndAudiences().GetProviderName()}
	case req.GetRequiresAny() != nil || req.GetRequiresAll() != nil:
		for _, r := range append(req.GetRequiresAny().GetRequirements(), req.GetRequiresAll().GetRequirements()...) {
			f.sanitize(rq, r)
		}
	case req.GetAllowMissing() != nil, req.GetAllowMissingOrFailed() != nil:
		for name := range f.providers {
			names = append(names, name)
		}
	}
	for _, name := range names {
		if p := f.providers[name]; p != nil && p.cfg.GetForwardPayloadHeader() != "" {
			rq.hdr.remove(strings.ToLower(p.cfg.GetForwardPayloadHeader()))
		}
	}
}

func (f *jwtFilter) eval(rq *request, req *jwtauthnv3.JwtRequirement, _ []string) error {
	switch {
	case req.GetProviderName() != "":
		return f.verify(rq, req.GetProviderName(), nil)
	case req.GetProviderAndAudiences() != nil:
		pa := req.GetProviderAndAudiences()
		return f.verify(rq, pa.GetProviderName(), pa.GetAudiences())
	case req.GetRequiresAny() != nil:
		var last error = errJwtMissing
		for _, r := range req.GetRequiresAny().GetRequirements() {
			err := f.eval(rq, r, nil)
			if err == nil {
				return nil
			}
			if !errors.Is(err, errJwtMissing) || errors.Is(last, errJwtMissing) {
				last = err
			}
		}
		return last
	case req.GetRequiresAll() != nil:
		for _, r := range req.GetRequiresAll().GetRequirements() {
			if err := f.eval(rq, r, nil); err != nil {
				return err
			}
		}
		return nil
	case req.GetAllowMissing() != nil, req.GetAllowMissingOrFailed() != nil:
		var failed error
		for name := range f.providers {
			if err := f.verify(rq, name, nil); err != nil && !errors.Is(err, errJwtMissing) {
				failed = err
			}
		}
		if req.GetAllowMissing() != nil {
			return failed
		}
		return nil
	}
	return nil
}

// token finds the provider's token: from_headers, else
// "authorization: Bearer" (and the access_token query parameter).
func (p *jwtProvider) token(h *headerMap) (tok, header string) {
	if len(p.cfg.GetFromHeaders()) == 0 && len(p.cfg.GetFromParams()) == 0 && len(p.cfg.GetFromCookies()) == 0 {
		if v, ok := h.get("authorization"); ok && len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
			return strings.TrimSpace(v[7:]), "authorization"
		}
		return "", ""
	}
	for _, jh := range p.cfg.GetFromHeaders() {
		name := strings.ToLower(jh.GetName())
		if v, ok := h.get(name); ok && strings.HasPrefix(v, jh.GetValuePrefix()) {
			return strings.TrimSpace(strings.TrimPrefix(v, jh.GetValuePrefix())), name
		}
	}
	return "", ""
}

func (f *jwtFilter) verify(rq *request, providerName string, audiences []string) error {
	p := f.providers[providerName]
	if p == nil {
		return errJwtBad
	}
	tok, hdrName := p.token(rq.hdr)
	if tok == "" {
		return errJwtMissing
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return errJwtBad
	}
	rawHeader, err1 := b64(parts[0])
	rawPayload, err2 := b64(parts[1])
	sig, err3 := b64(parts[2])
	if err1 != nil || err2 != nil || err3 != nil {
		return errJwtBad
	}
	var hdr struct {
		Alg string `json:"alg"`
		Kid string `json:"kid"`
	}
	var claims map[string]any
	if json.Unmarshal(rawHeader, &hdr) != nil || json.Unmarshal(rawPayload, &claims) != nil {
		return errJwtBad
	}
	skew := time.Duration(60) * time.Second
	if p.cfg.GetClockSkewSeconds() != 0 {
		skew = time.Duration(p.cfg.GetClockSkewSeconds()) * time.Second
	}
	now := time.Now()
	if iss := p.cfg.GetIssuer(); iss != "" && claims["iss"] != iss {
		return errJwtIssuer
	}
	if auds := append(audiences, p.cfg.GetAudiences()...); len(auds) > 0 && !audienceOK(claims["aud"], auds) {
		return errJwtAud
	}
	if exp, ok := claims["exp"].(float64); ok && now.After(time.Unix(int64(exp), 0).Add(skew)) {
		return errJwtExpired
	}
	if nbf, ok := claims["nbf"].(float64); ok && now.Add(skew).Before(time.Unix(int64(nbf), 0)) {
		return errJwtNotYet
	}
	keys, err := p.jwks(rq.ctx)
	if err != nil {
		return errJwtKeys
	}
	signed := []byte(parts[0] + "." + parts[1])
	verified := false
	for _, k := range keys {
		if hdr.Kid != "" && k.Kid != "" && k.Kid != hdr.Kid {
			continue
		}
		if verifySig(hdr.Alg, k, signed, sig) {
			verified = true
			break
		}
	}
	if !verified {
		return errJwtBad
	}
	if name := p.cfg.GetForwardPayloadHeader(); name != "" {
		v := parts[1]
		if p.cfg.GetPadForwardPayloadHeader() {
			v = base64.URLEncoding.EncodeToString(rawPayload)
		}
		rq.hdr.set(strings.ToLower(name), v)
	}
	if key := p.cfg.GetPayloadInMetadata(); key != "" {
		if s, err := structpb.NewStruct(claims); err == nil {
			rq.info.setMetadata("envoy.filters.http.jwt_authn", &structpb.Struct{Fields: map[string]*structpb.Value{key: structpb.NewStructValue(s)}})
		}
	}
	if !p.cfg.GetForward() && hdrName != "" {
		rq.hdr.remove(hdrName)
	}
	return nil
}

func audienceOK(aud any, allowed []string) bool {
	var got []string
	switch a := aud.(type) {
	case string:
		got = []string{a}
	case []any:
		for _, x := range a {
			if s, ok := x.(string); ok {
				got = append(got, s)
			}
		}
	}
	for _, g := range got {
		for _, w := range allowed {
			if strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(g, "https://"), "http://"), "/") ==
				strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(w, "https://"), "http://"), "/") {
				return true
			}
		}
	}
	return false
}

func verifySig(alg string, k *jwk, signed, sig []byte) bool {
	if len(alg) != 5 {
		return false
	}
	var h func() hash.Hash
	var ch crypto.Hash
	switch alg[2:] {
	case "256":
		h, ch = sha256.New, crypto.SHA256
	case "384":
		h, ch = sha512.New384, crypto.SHA384
	case "512":
		h, ch = sha512.New, crypto.SHA512
	default:
		return false
	}
	sum := func() []byte { d := h(); d.Write(signed); return d.Sum(nil) }
	switch {
	case strings.HasPrefix(alg, "RS"):
		pub, ok := k.pub.(*rsa.PublicKey)
		return ok && rsa.VerifyPKCS1v15(pub, ch, sum(), sig) == nil
	case strings.HasPrefix(alg, "PS"):
		pub, ok := k.pub.(*rsa.PublicKey)
		return ok && rsa.VerifyPSS(pub, ch, sum(), sig, nil) == nil
	case strings.HasPrefix(alg, "ES"):
		pub, ok := k.pub.(*ecdsa.PublicKey)
		if !ok || len(sig)%2 != 0 {
			return false
		}
		r := new(big.Int).SetBytes(sig[:len(sig)/2])
		s := new(big.Int).SetBytes(sig[len(sig)/2:])
		return ecdsa.Verify(pub, sum(), r, s)
	case strings.HasPrefix(alg, "HS"):
		key, ok := k.pub.([]byte)
		if !ok {
			return false
		}
		m := hmac.New(h, key)
		m.Write(signed)
		return hmac.Equal(m.Sum(nil), sig)
	}
	return false
}

// jwks returns the provider's keys, fetching remote ones through their
// cluster and caching them for cache_duration (default 10 minutes).
func (p *jwtProvider) jwks(ctx context.Context) ([]*jwk, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	rj := p.cfg.GetRemoteJwks()
	if rj == nil {
		return p.keys, nil
	}
	ttl := 10 * time.Minute
	if rj.GetCacheDuration() != nil {
		ttl = rj.GetCacheDuration().AsDuration()
	}
	if p.keys != nil && time.Since(p.fetched) < ttl {
		return p.keys, nil
	}
	hu := rj.GetHttpUri()
	timeout := 5 * time.Second
	if hu.GetTimeout() != nil {
		timeout = hu.GetTimeout().AsDuration()
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cl := p.f.e.clusters[hu.GetCluster()]
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, hu.GetUri(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := cl.transport.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("jwks fetch: status %d: %v", resp.StatusCode, err)
	}
	keys, err := parseJWKS(data)
	if err != nil {
		return nil, err
	}
	p.keys, p.fetched = keys, time.Now()
	return keys, nil
}
