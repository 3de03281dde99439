package store

import (
	"fmt"

	"github.com/hashicorp/go-memdb"

	"github.com/keymux/keymux/policy"
)

// Table names.
const (
	tableKeys     = "keys"
	tableClients  = "clients"
	tableSettings = "settings"
	tableMeta     = "meta"
)

// Index names.
const (
	indexID          = "id"
	indexEnabled     = "enabled"
	indexTokenSHA256 = "token_sha256"
)

// Singleton row ids.
const (
	singletonID = "singleton"
)

// Pools (metaRow.Pools): "" is every enabled key, unlistedPool serves every model that no
// key or rule names.
const unlistedPool = ReservedModel

// keyRow is a row of the keys table.
type keyRow struct {
	ID      string
	Enabled bool
	Entry   *Entry
}

// clientRow is a row of the clients table.
type clientRow struct {
	ID     string
	Client *policy.Client
}

// settingsRow is the single row of the settings table.
type settingsRow struct {
	ID       string
	Settings *policy.Settings
}

// metaRow is the single row of the meta table.
type metaRow struct {
	ID         string
	Generation uint64
	Source     SourceInfo
	RuleIndex  *ruleIndex       // the enabled rules by (key, from)
	RuleList   []*policy.Rule   // every rule, in id order
	Pools      map[string]*Pool // by model: "", unlistedPool and each listed model
	Models     []string
	Named      map[string]bool // every model a key lists or a rule names (from or to)
	KeyModels  map[string]int  // model -> how many keys (enabled or not) list it
	Keys       int
	Rules      int
	Clients    int
}

func schema() *memdb.DBSchema {
	return &memdb.DBSchema{Tables: map[string]*memdb.TableSchema{
		tableKeys:     keysTableSchema(),
		tableClients:  clientsTableSchema(),
		tableSettings: settingsTableSchema(),
		tableMeta:     metaTableSchema(),
	}}
}

func keysTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{
		Name: tableKeys,
		Indexes: map[string]*memdb.IndexSchema{
			indexID: {Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
			indexEnabled: {Name: indexEnabled, AllowMissing: true, Indexer: &memdb.ConditionalIndex{
				Conditional: func(obj any) (bool, error) {
					r, ok := obj.(*keyRow)
					if !ok {
						return false, fmt.Errorf("keys: unexpected row %T", obj)
					}
					return r.Enabled, nil
				},
			}},
		},
	}
}

func clientsTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{
		Name: tableClients,
		Indexes: map[string]*memdb.IndexSchema{
			indexID:          {Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
			indexTokenSHA256: {Name: indexTokenSHA256, Unique: true, Indexer: tokenIndex{}},
		},
	}
}

func settingsTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{
		Name: tableSettings,
		Indexes: map[string]*memdb.IndexSchema{
			indexID: {Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
		},
	}
}

func metaTableSchema() *memdb.TableSchema {
	return &memdb.TableSchema{
		Name: tableMeta,
		Indexes: map[string]*memdb.IndexSchema{
			indexID: {Name: indexID, Unique: true, Indexer: &memdb.StringFieldIndex{Field: "ID"}},
		},
	}
}

// tokenIndex indexes clients by the SHA-256 of their token; arguments are
// [32]byte or a 32-byte []byte.
type tokenIndex struct{}

var (
	_ memdb.SingleIndexer = tokenIndex{}
	_ memdb.Indexer       = tokenIndex{}
)

func (tokenIndex) FromObject(obj any) (bool, []byte, error) {
	r, ok := obj.(*clientRow)
	if !ok || r.Client == nil {
		return false, nil, fmt.Errorf("clients: unexpected row %T", obj)
	}
	sum := r.Client.TokenSHA256
	return true, sum[:], nil
}

func (tokenIndex) FromArgs(args ...any) ([]byte, error) {
	if len(args) != 1 {
		return nil, fmt.Errorf("token_sha256: want one argument, got %d", len(args))
	}
	switch v := args[0].(type) {
	case [32]byte:
		return v[:], nil
	case *[32]byte:
		return v[:], nil
	case []byte:
		if len(v) != 32 {
			return nil, fmt.Errorf("token_sha256: want 32 bytes, got %d", len(v))
		}
		return v, nil
	}
	return nil, fmt.Errorf("token_sha256: unexpected argument %T", args[0])
}
