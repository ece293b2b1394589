package credentials

import (
	"errors"
	"strings"
	"testing"
)

func TestParseDocumentShape(t *testing.T) {
	const rec = `{"company_id": "5A1C0B7E-8F0E-4C1D-9A55-2B7D3F1E4A10", "type": "standalone_api_key", "api_key": "k1"}`
	tests := []struct {
		name string
		doc  string
		want string // "" means accepted; otherwise a substring of the error
	}{
		{"one record", `{"credentials": [` + rec + `]}`, ""},
		{"empty list", `{"credentials": []}`, ""},
		{"member name in another case", `{"Credentials": [` + rec + `]}`, ""},
		{"not an object", `[` + rec + `]`, "must be a JSON object"},
		{"empty input", ``, "unexpected EOF"},
		{"missing array", `{}`, `missing "credentials" array`},
		{"null array", `{"credentials": null}`, `missing "credentials" array`},
		{"array twice", `{"credentials": [], "credentials": []}`, "appears twice"},
		{"not an array", `{"credentials": {"a": 1}}`, "must be an array"},
		{"unknown member", `{"credentials": [], "extra": 1}`, `unknown field "extra"`},
		{"unknown record field", `{"credentials": [{"company_id": "x", "colour": 1}]}`, `record 0: json: unknown field "colour"`},
		{"truncated", `{"credentials": [` + rec, "unexpected EOF"},
		{"trailing data", `{"credentials": []} {}`, "unexpected data after the document"},
		{"bad record", `{"credentials": [` + rec + `, {"company_id": "nope", "type": "oauth2"}]}`, "record 1"},
		{"duplicate company", `{"credentials": [` + rec + `,` + rec + `]}`, "duplicates record 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			creds, err := Parse(strings.NewReader(tt.doc))
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if strings.Contains(tt.doc, "5A1C") && (len(creds) != 1 || creds[0].CompanyID != "5a1c0b7e-8f0e-4c1d-9a55-2b7d3f1e4a10" || creds[0].APIKey != "k1") {
					t.Fatalf("Parse = %+v", creds)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Parse error = %v, want one containing %q", err, tt.want)
			}
			if creds != nil {
				t.Fatalf("Parse returned credentials with an error")
			}
			var re *RecordError
			if strings.Contains(tt.want, "duplicates") && !errors.As(err, &re) {
				t.Fatalf("duplicate not reported as a *RecordError: %v", err)
			}
		})
	}
}
