package app

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/keymux/keymux/store"
)

// clientsList is `kv clients list` (tokens are never stored, so never shown).
func (c *kvCmd) clientsList() func([]string) error {
	return c.listCmd(store.KindClients, "NAME\tENABLED\tMODELS\tRPM\tTPM", func(id string, raw []byte) (string, error) {
		cl, err := store.ParseClient(id, raw)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%s\t%t\t%s\t%d\t%d", cl.Name, cl.Enabled, listOrAny(cl.Models), cl.Limits.RPM, cl.Limits.TPM), nil
	})
}

// newClientToken returns a fresh client token ("km-" and 43 base64url
// characters, 256 random bits) and the hex SHA-256 stored in KV.
func newClientToken() (token, sha256Hex string, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", err
	}
	token = "km-" + base64.RawURLEncoding.EncodeToString(b[:])
	sum := sha256.Sum256([]byte(token))
	return token, hex.EncodeToString(sum[:]), nil
}

// clientsAdd is `kv clients add ID [flags]`: it stores the SHA-256 of a new
// token and prints the token once.
func (c *kvCmd) clientsAdd(args []string) error {
	fs := c.flags("clients add")
	name := fs.String("name", "", "display name (default: the id)")
	models := fs.String("models", "", "comma-separated models the client may use (empty = any)")
	disabled := fs.Bool("disabled", false, "add the client disabled")
	rpm := fs.Int("rpm", 0, "requests per minute (0 = unlimited)")
	tpm := fs.Int("tpm", 0, "tokens per minute (0 = unlimited)")
	pos, err := c.parse(fs, args, "ID", 1, 1)
	if err != nil {
		return err
	}
	id := pos[0]
	token, sum, err := newClientToken()
	if err != nil {
		return fmt.Errorf("kv clients add: %w", err)
	}
	d := map[string]any{"token_sha256": sum}
	if *name != "" {
		d["name"] = *name
	}
	if ms := splitList(*models); len(ms) > 0 {
		d["models"] = ms
	}
	if *disabled {
		d["enabled"] = false
	}
	if *rpm != 0 || *tpm != 0 {
		d["limits"] = map[string]int{"rpm": *rpm, "tpm": *tpm}
	}
	raw, _ := json.Marshal(d)
	if err := c.putDoc(store.KindClients, id, raw, false); err != nil {
		return err
	}
	fmt.Fprintf(c.Stdout, "token for client %s (shown once; keymux keeps only its SHA-256):\n%s\n", id, token)
	return nil
}
