package consul

import (
	"bytes"
	"maps"
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

// fleetScan collects the fleet's changes of one answer.
type fleetScan struct {
	membersChanged bool
	changes        []stateChange
}

type stateChange struct {
	id    string
	raw   []byte // nil: deleted
	index uint64
}

// fleetID returns the id of a fleet entry (state/<id> or members/<id>):
// folder is StateFolder or MembersFolder, id "" for a malformed one.
func (s *Source) fleetID(path string) (folder, id string, ok bool) {
	rel, ok := strings.CutPrefix(path, s.opts.Prefix)
	if !ok {
		return "", "", false
	}
	for _, f := range []string{StateFolder, MembersFolder} {
		if id, ok := strings.CutPrefix(rel, f); ok {
			if id == "" || strings.Contains(id, "/") {
				id = ""
			}
			return f, id, true
		}
	}
	return "", "", false
}

// fleetPair takes p, new or changed, when it is a fleet entry and reports
// whether it did.
func (s *Source) fleetPair(scan *fleetScan, p *api.KVPair) bool {
	folder, id, ok := s.fleetID(p.Key)
	if !ok || id == "" {
		return ok
	}
	if folder == StateFolder {
		old, had := s.states[id]
		if had && old.modifyIndex == p.ModifyIndex && bytes.Equal(old.value, p.Value) {
			return true
		}
		s.states[id] = kvValue{p.ModifyIndex, p.Value}
		scan.changes = append(scan.changes, stateChange{id, p.Value, p.ModifyIndex})
		return true
	}
	// Only an entry held by a session is a live member: Consul deletes it
	// when the session ends (behavior delete).
	if held := p.Session != ""; held != s.memberSet[id] {
		scan.membersChanged = true
		if held {
			s.memberSet[id] = true
		} else {
			delete(s.memberSet, id)
		}
	}
	return true
}

// fleetGone takes p, removed, when it is a fleet entry and reports whether
// it did.
func (s *Source) fleetGone(scan *fleetScan, p *api.KVPair) bool {
	folder, id, ok := s.fleetID(p.Key)
	if !ok || id == "" {
		return ok
	}
	if folder == StateFolder {
		if _, had := s.states[id]; had {
			delete(s.states, id)
			scan.changes = append(scan.changes, stateChange{id: id})
		}
		return true
	}
	if s.memberSet[id] {
		delete(s.memberSet, id)
		scan.membersChanged = true
	}
	return true
}

// fleetDone hands the scan's changes to OnState and OnMembers.
func (s *Source) fleetDone(scan *fleetScan) {
	if s.opts.OnState != nil {
		for _, c := range scan.changes {
			s.opts.OnState(c.id, c.raw, c.index)
		}
	}
	if s.opts.OnMembers != nil && (!s.membersSeen || scan.membersChanged) {
		members := slices.Sorted(maps.Keys(s.memberSet))
		if !s.membersSeen || !slices.Equal(members, s.members) {
			s.membersSeen, s.members = true, members
			s.opts.OnMembers(slices.Clone(members))
		}
	}
}
