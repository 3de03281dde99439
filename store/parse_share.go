package store

import (
	"time"

	"github.com/keymux/keymux/policy"
)

// shareDoc is settings.share: which key states an instance shares with the
// fleet through Consul.
type shareDoc struct {
	CooldownOver *string `json:"cooldown_over"`
}

func (d *shareDoc) UnmarshalJSON(b []byte) error {
	type plain shareDoc
	return decodeNested("share", b, (*plain)(d))
}

// MaxShareCooldownOver bounds settings.share.cooldown_over.
const MaxShareCooldownOver = time.Hour

// parseShare applies settings.share.
func parseShare(doc string, d *shareDoc, s *policy.ShareSettings) error {
	if d == nil {
		return nil
	}
	if err := parseDuration(doc, "share.cooldown_over", d.CooldownOver, &s.CooldownOver); err != nil {
		return err
	}
	if s.CooldownOver > MaxShareCooldownOver {
		return fieldErr(doc, "share.cooldown_over", "must be at most %s", MaxShareCooldownOver)
	}
	return nil
}
