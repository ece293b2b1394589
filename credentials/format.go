package credentials

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"time"
)

// File is the JSON document of section 4 of the contract: the import format, and the file
// store's format when no encryption key is set.
type File struct {
	Credentials []Record `json:"credentials"`
}

// Record is one credential as JSON, secrets in the clear. It exists only on the way to and
// from a file; everywhere else a Credential with Secret fields is used.
type Record struct {
	CompanyID       string     `json:"company_id"`
	TenantID        string     `json:"tenant_id,omitempty"`
	Type            Type       `json:"type"`
	AccessToken     string     `json:"access_token,omitempty"`
	RefreshToken    string     `json:"refresh_token,omitempty"`
	APIKey          string     `json:"api_key,omitempty"`
	ExpiresAt       *time.Time `json:"expires_at,omitempty"`
	State           State      `json:"state,omitempty"`
	LastRefreshedAt *time.Time `json:"last_refreshed_at,omitempty"`
	LastError       string     `json:"last_error,omitempty"`
	Version         int64      `json:"version,omitempty"`
}

// Credential converts the record.
func (r Record) Credential() Credential {
	c := Credential{
		CompanyID:    r.CompanyID,
		TenantID:     r.TenantID,
		Type:         r.Type,
		AccessToken:  Secret(r.AccessToken),
		RefreshToken: Secret(r.RefreshToken),
		APIKey:       Secret(r.APIKey),
		State:        r.State,
		LastError:    r.LastError,
		Version:      r.Version,
	}
	if r.ExpiresAt != nil {
		c.ExpiresAt = r.ExpiresAt.UTC()
	}
	if r.LastRefreshedAt != nil {
		c.LastRefreshedAt = r.LastRefreshedAt.UTC()
	}
	if c.State == "" {
		c.State = StateActive
	}
	return c
}

// RecordOf converts a credential for writing to a file.
func RecordOf(c Credential) Record {
	r := Record{
		CompanyID:    c.CompanyID,
		TenantID:     c.TenantID,
		Type:         c.Type,
		AccessToken:  c.AccessToken.Reveal(),
		RefreshToken: c.RefreshToken.Reveal(),
		APIKey:       c.APIKey.Reveal(),
		State:        c.State,
		LastError:    c.LastError,
		Version:      c.Version,
	}
	if !c.ExpiresAt.IsZero() {
		t := c.ExpiresAt.UTC()
		r.ExpiresAt = &t
	}
	if !c.LastRefreshedAt.IsZero() {
		t := c.LastRefreshedAt.UTC()
		r.LastRefreshedAt = &t
	}
	return r
}

// Parse decodes and validates a credentials document. It rejects unknown fields, trailing
// data, duplicate company ids and duplicate tenant ids, naming the offending record by index.
// Company ids are lower-cased.
func Parse(r io.Reader) ([]Credential, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var f File
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("credentials: parse: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("credentials: parse: unexpected data after the document")
	}
	if f.Credentials == nil {
		return nil, fmt.Errorf("credentials: parse: missing \"credentials\" array")
	}
	return FromRecords(f.Credentials)
}

// FromRecords converts and validates records, as Parse does.
func FromRecords(records []Record) ([]Credential, error) {
	out := make([]Credential, 0, len(records))
	companies := make(map[string]int, len(records))
	tenants := make(map[string]int)
	for i, rec := range records {
		c := rec.Credential()
		c.CompanyID = CanonicalCompanyID(c.CompanyID)
		if err := c.Validate(); err != nil {
			return nil, &RecordError{Index: i, CompanyID: rec.CompanyID, Err: err}
		}
		if j, dup := companies[c.CompanyID]; dup {
			return nil, &RecordError{Index: i, CompanyID: rec.CompanyID, Err: fmt.Errorf("company_id duplicates record %d", j)}
		}
		companies[c.CompanyID] = i
		if c.TenantID != "" {
			if j, dup := tenants[c.TenantID]; dup {
				return nil, &RecordError{Index: i, CompanyID: rec.CompanyID, Err: fmt.Errorf("tenant_id duplicates record %d", j)}
			}
			tenants[c.TenantID] = i
		}
		out = append(out, c)
	}
	return out, nil
}

// Marshal encodes credentials as a File document, ordered by company id, secrets in the clear.
func Marshal(creds []Credential) ([]byte, error) {
	f := File{Credentials: make([]Record, 0, len(creds))}
	for _, c := range creds {
		f.Credentials = append(f.Credentials, RecordOf(c))
	}
	sort.Slice(f.Credentials, func(i, j int) bool { return f.Credentials[i].CompanyID < f.Credentials[j].CompanyID })
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(f); err != nil {
		return nil, fmt.Errorf("credentials: marshal: %w", err)
	}
	return buf.Bytes(), nil
}

// CanonicalCompanyID lower-cases an id's ASCII letters, so UUIDs compare equal in either case.
func CanonicalCompanyID(s string) string {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}
