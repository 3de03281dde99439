package consul

import (
	"bytes"
	"slices"
	"strings"

	"github.com/hashicorp/consul/api"
)

// The fleet's folders under the prefix (package fleet writes them): key
// states one instance shares with the others, and the live members.
const (
	StateFolder   = "state/"
	MembersFolder = "members/"
)

// StatePath is the KV path of key keyID's shared state under prefix.
func StatePath(prefix, keyID string) string { return prefix + StateFolder + keyID }

// MemberPath is the KV path of member id under prefix.
func MemberPath(prefix, id string) string { return prefix + MembersFolder + id }

// fleetScan collects the fleet's entries of one answer.
type fleetScan struct {
	states  map[string]bool // key ids seen under state/
	members []string        // member ids held by a session
	changes []stateChange
}

type stateChange struct {
	id    string
	raw   []byte // nil: deleted
	index uint64
}

// fleetPair takes p when it is a fleet entry (state/<id> or members/<id>)
// and reports whether it did.
func (s *Source) fleetPair(scan *fleetScan, p *api.KVPair) bool {
	rel, ok := strings.CutPrefix(p.Key, s.opts.Prefix)
	if !ok {
		return false
	}
	if id, ok := strings.CutPrefix(rel, StateFolder); ok {
		if id == "" || strings.Contains(id, "/") {
			return true
		}
		scan.states[id] = true
		old, had := s.states[id]
		if had && old.modifyIndex == p.ModifyIndex && bytes.Equal(old.value, p.Value) {
			return true
		}
		s.states[id] = kvValue{p.ModifyIndex, p.Value}
		scan.changes = append(scan.changes, stateChange{id, p.Value, p.ModifyIndex})
		return true
	}
	if id, ok := strings.CutPrefix(rel, MembersFolder); ok {
		// Only an entry held by a session is a live member: Consul deletes
		// it when the session ends (behavior delete).
		if id != "" && !strings.Contains(id, "/") && p.Session != "" {
			scan.members = append(scan.members, id)
		}
		return true
	}
	return false
}

// fleetDone hands the scan's changes to OnState and OnMembers.
func (s *Source) fleetDone(scan *fleetScan) {
	for id := range s.states {
		if !scan.states[id] {
			delete(s.states, id)
			scan.changes = append(scan.changes, stateChange{id: id})
		}
	}
	if s.opts.OnState != nil {
		for _, c := range scan.changes {
			s.opts.OnState(c.id, c.raw, c.index)
		}
	}
	slices.Sort(scan.members)
	if s.opts.OnMembers != nil && (!s.membersSeen || !slices.Equal(scan.members, s.members)) {
		s.membersSeen, s.members = true, scan.members
		s.opts.OnMembers(slices.Clone(scan.members))
	}
}
