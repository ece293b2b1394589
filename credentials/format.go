package credentials

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
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
// Company ids are lower-cased. It streams: one record at a time is decoded, so a document of
// 100,000 credentials is never held twice in memory.
func Parse(r io.Reader) ([]Credential, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	creds, err := parseDocument(dec)
	if err != nil {
		return nil, fmt.Errorf("credentials: parse: %w", err)
	}
	return creds, nil
}

// parseDocument reads one File object from dec, record by record, and then expects the end
// of the input.
func parseDocument(dec *json.Decoder) ([]Credential, error) {
	if err := expectDelim(dec, '{', "the document must be a JSON object"); err != nil {
		return nil, err
	}
	var (
		out  []Credential
		seen bool
		v    recordValidator
	)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := tok.(string)
		if !strings.EqualFold(key, "credentials") {
			return nil, fmt.Errorf("json: unknown field %q", key)
		}
		if seen {
			return nil, errors.New(`"credentials" appears twice`)
		}
		seen = true
		tok, err = dec.Token()
		if err != nil {
			return nil, err
		}
		switch tok {
		case nil:
			continue // null: reported as missing below
		case json.Delim('['):
		default:
			return nil, errors.New(`"credentials" must be an array`)
		}
		out = []Credential{}
		for i := 0; dec.More(); i++ {
			var rec Record
			if err := dec.Decode(&rec); err != nil {
				return nil, fmt.Errorf("record %d: %w", i, err)
			}
			c, err := v.check(i, rec)
			if err != nil {
				return nil, err
			}
			out = append(out, c)
		}
		if err := expectDelim(dec, ']', `"credentials" must be an array`); err != nil {
			return nil, err
		}
	}
	if err := expectDelim(dec, '}', "the document must be a JSON object"); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("unexpected data after the document")
	}
	if out == nil {
		return nil, errors.New(`missing "credentials" array`)
	}
	return slices.Clip(out), nil
}

// expectDelim reads the next token and fails with msg unless it is d.
func expectDelim(dec *json.Decoder, d json.Delim, msg string) error {
	tok, err := dec.Token()
	if err != nil {
		if err == io.EOF {
			return io.ErrUnexpectedEOF
		}
		return err
	}
	if tok != d {
		return errors.New(msg)
	}
	return nil
}

// recordValidator converts and validates records one at a time, remembering company and
// tenant ids to refuse duplicates.
type recordValidator struct {
	companies map[string]int
	tenants   map[string]int
}

// check converts record i and validates it against the records checked before it.
func (v *recordValidator) check(i int, rec Record) (Credential, error) {
	if v.companies == nil {
		v.companies = make(map[string]int)
		v.tenants = make(map[string]int)
	}
	c := rec.Credential()
	c.CompanyID = CanonicalCompanyID(c.CompanyID)
	if err := c.Validate(); err != nil {
		return Credential{}, &RecordError{Index: i, CompanyID: rec.CompanyID, Err: err}
	}
	if j, dup := v.companies[c.CompanyID]; dup {
		return Credential{}, &RecordError{Index: i, CompanyID: rec.CompanyID, Err: fmt.Errorf("company_id duplicates record %d", j)}
	}
	v.companies[c.CompanyID] = i
	if c.TenantID != "" {
		if j, dup := v.tenants[c.TenantID]; dup {
			return Credential{}, &RecordError{Index: i, CompanyID: rec.CompanyID, Err: fmt.Errorf("tenant_id duplicates record %d", j)}
		}
		v.tenants[c.TenantID] = i
	}
	return c, nil
}

// FromRecords converts and validates records, as Parse does.
func FromRecords(records []Record) ([]Credential, error) {
	out := make([]Credential, 0, len(records))
	var v recordValidator
	for i, rec := range records {
		c, err := v.check(i, rec)
		if err != nil {
			return nil, err
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
	return encodeDocument(nil, f.Credentials)
}

// encodeDocument encodes a credentials document, encrypted when encryption is set, with its
// records ordered by company id and indented as every credentials file is.
func encodeDocument(encryption *FileEncryption, records []Record) ([]byte, error) {
	sort.Slice(records, func(i, j int) bool { return records[i].CompanyID < records[j].CompanyID })
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(encryptedFile{Encryption: encryption, Credentials: records}); err != nil {
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
