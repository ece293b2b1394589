package credentials

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

// fuzzSeeds are the seed corpus of the credentials file parsers: valid documents of each type,
// and truncated, mistyped, oversized and encrypted ones. FuzzParse and FuzzParseFile run them
// in every `go test`; `go test -fuzz FuzzParse ./credentials/` explores from them.
func fuzzSeeds(t testing.TB) []string {
	c1, c2, c3 := stCompany(1), stCompany(2), stCompany(3)
	valid := `{"credentials": [
  {"company_id": "` + c1 + `", "tenant_id": "erp-tenant-42", "type": "oauth2",
   "access_token": "at-1", "refresh_token": "rt-1", "expires_at": "2026-11-28T12:00:00Z"},
  {"company_id": "` + c2 + `", "type": "integrated_api_key", "api_key": "ik-2"},
  {"company_id": "` + c3 + `", "type": "standalone_api_key", "api_key": "sk-3", "expires_at": "2027-01-01T00:00:00+02:00"}
]}`
	full := `{"credentials": [{"company_id": "` + strings.ToUpper(c1) + `", "type": "oauth2", "refresh_token": "rt",
  "state": "reauthorization_required", "last_refreshed_at": "2026-11-28T11:30:00.123456789Z",
  "last_error": "invalid_grant \u003c\u0000 ü", "version": 9223372036854775807}]}`
	seeds := []string{
		valid,
		full,
		`{"credentials": []}`,
		`{"credentials": [{"company_id": "` + c1 + `", "type": "oauth2", "refresh_token": "rt"}]}`,
		`{"credentials": [{"company_id": "` + c2 + `", "type": "integrated_api_key", "api_key": "k", "expires_at": null, "tenant_id": ""}]}`,
		// truncated
		valid[:len(valid)/2],
		valid[:len(valid)-1],
		`{"credentials": [`,
		`{`,
		``,
		// wrong types
		`{"credentials": {}}`,
		`{"credentials": [1, "two", null]}`,
		`{"credentials": [{"company_id": 5, "type": "oauth2"}]}`,
		`{"credentials": [{"company_id": "` + c1 + `", "type": "oauth2", "refresh_token": ["rt"]}]}`,
		`{"credentials": [{"company_id": "` + c1 + `", "type": "api_key", "api_key": "k"}]}`,
		`{"credentials": [{"company_id": "` + c1 + `", "type": "integrated_api_key", "api_key": "k", "expires_at": "tomorrow"}]}`,
		`{"credentials": [{"company_id": "` + c1 + `", "type": "integrated_api_key", "api_key": "k", "state": "gone"}]}`,
		`[]`,
		`null`,
		`"credentials"`,
		// huge numbers and long values
		`{"credentials": [{"company_id": "` + c1 + `", "type": "integrated_api_key", "api_key": "k", "version": 1e400}]}`,
		`{"credentials": [{"company_id": "` + c1 + `", "type": "integrated_api_key", "api_key": "k", "version": 99999999999999999999}]}`,
		`{"credentials": [{"company_id": "` + c1 + `", "type": "integrated_api_key", "api_key": "k", "version": -1}]}`,
		`{"credentials": [{"company_id": "` + c1 + `", "type": "integrated_api_key", "api_key": "k", "expires_at": "9999-12-31T23:59:59-01:00"}]}`,
		`{"credentials": [{"company_id": "` + c1 + `", "type": "integrated_api_key", "api_key": "` + strings.Repeat("k", 5000) + `"}]}`,
		`{"credentials": [{"company_id": "` + c1 + `", "tenant_id": "` + strings.Repeat("t", 257) + `", "type": "integrated_api_key", "api_key": "k"}]}`,
		// duplicates, unknown fields, trailing data, bad secrets
		`{"credentials": [{"company_id": "` + c1 + `", "type": "integrated_api_key", "api_key": "a"}, {"company_id": "` + strings.ToUpper(c1) + `", "type": "integrated_api_key", "api_key": "b"}]}`,
		`{"credentials": [{"company_id": "` + c1 + `", "tenant_id": "t", "type": "integrated_api_key", "api_key": "a"}, {"company_id": "` + c2 + `", "tenant_id": "t", "type": "integrated_api_key", "api_key": "b"}]}`,
		`{"credentials": [], "extra": true}`,
		`{"credentials": []} {}`,
		`{"credentials": [{"company_id": "` + c1 + `", "type": "integrated_api_key", "api_key": "with space"}]}`,
		`{"credentials": [{"company_id": "` + c1 + `", "type": "integrated_api_key", "api_key": "\u0000"}]}`,
		`{"credentials": [{"company_id": "` + c1 + `", "type": "oauth2", "refresh_token": "rt", "api_key": "k"}]}`,
		"{\"credentials\": [{\"company_id\": \"" + c1 + "\", \"type\": \"integrated_api_key\", \"api_key\": \"\xff\xfe\"}]}",
		// encrypted forms (keys testKey(1) and testKey(2), see FuzzParseFile), and broken ones
		`{"encryption": {"version": 1}, "credentials": []}`,
		`{"encryption": {"version": 2}, "credentials": []}`,
		`{"encryption": null, "credentials": []}`,
		`{"encryption": {"version": 1, "key": "x"}, "credentials": []}`,
		`{"encryption": {"version": 1}}`,
		`{"encryption": {"version": 1}, "credentials": [{"company_id": "` + c1 + `", "type": "integrated_api_key", "api_key": "not-sealed"}]}`,
		`{"credentials": [{"company_id": "` + c1 + `", "type": "integrated_api_key", "api_key": "v1.0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}`,
	}
	creds, err := Parse(strings.NewReader(valid))
	if err != nil {
		t.Fatal(err)
	}
	for _, keys := range [][][]byte{{testKey(1)}, {testKey(2)}} {
		enc, err := marshalFile(creds, testSealer(t, keys...))
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, string(enc), string(enc[:len(enc)/2]))
	}
	return seeds
}

// FuzzParse: Parse never panics, and whatever it accepts is written by Marshal and read back
// by Parse unchanged (and Marshal is then a fixed point).
func FuzzParse(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		creds, err := Parse(bytes.NewReader(data))
		if err != nil {
			if creds != nil {
				t.Fatalf("Parse returned credentials with an error")
			}
			return
		}
		out, err := Marshal(creds)
		if err != nil {
			t.Fatalf("Parse accepted a document Marshal cannot write: %v", err)
		}
		back, err := Parse(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("Marshal wrote a document Parse refuses: %v\n%s", err, out)
		}
		assertSameCredentials(t, creds, back)
		again, err := Marshal(back)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("Marshal is not stable: %v\n%s\n%s", err, out, again)
		}
	})
}

// FuzzParseFile: the file store's parser (plain and encrypted formats) never panics; whatever
// it accepts is written back in the encrypted format, and in the plain one, and read back
// unchanged.
func FuzzParseFile(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add([]byte(s))
	}
	sealer := testSealer(f, testKey(1), testKey(2))
	f.Fuzz(func(t *testing.T, data []byte) {
		creds, _, err := parseFile(data, sealer)
		if err != nil {
			return
		}
		for _, s := range []*Sealer{sealer, nil} {
			out, err := marshalFile(creds, s)
			if err != nil {
				t.Fatalf("parseFile accepted a document marshalFile cannot write: %v", err)
			}
			back, encrypted, err := parseFile(out, s)
			if err != nil {
				t.Fatalf("marshalFile wrote a document parseFile refuses: %v\n%s", err, out)
			}
			if encrypted != (s != nil) {
				t.Fatalf("written encrypted=%v, read back encrypted=%v", s != nil, encrypted)
			}
			assertSameCredentials(t, creds, back)
		}
	})
}

func assertSameCredentials(t *testing.T, a, b []Credential) {
	t.Helper()
	sortByCompany := func(cs []Credential) []Credential {
		cs = slices.Clone(cs)
		slices.SortFunc(cs, func(x, y Credential) int { return strings.Compare(x.CompanyID, y.CompanyID) })
		return cs
	}
	if !slices.EqualFunc(sortByCompany(a), sortByCompany(b), sameCredential) {
		t.Fatalf("round trip changed the credentials:\n%v\n%v", a, b)
	}
}
